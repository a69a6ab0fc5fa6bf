"""POST /v1/messages and /v1/messages/count_tokens through real sockets: counts, answers, ledger."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import orjson
import pytest

from batcher import facts
from batcher.simulator import tokens
from batcher.simulator.answers import PromptCache, instance
from batcher.simulator.config import SimConfig
from batcher.simulator.core import process, record
from batcher.simulator.errors import ApiError
from batcher.simulator.promptcache import CacheUse
from batcher.simulator.server import RunningSimulator
from batcher.simulator.validate import check_body
from tests.simulator.test_validate import b64_image, image_block

HAIKU, OPUS = "claude-haiku-5-5", "claude-opus-4-8"
HEADERS = {"x-api-key": "test", "anthropic-version": facts.API_VERSION}


@pytest.fixture
def client(simulator: RunningSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=simulator.base_url, headers=HEADERS, timeout=30) as c:
        yield c


def ask(*content: Any, model: str = HAIKU, max_tokens: int = 400, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": list(content)}],
        **extra,
    }


def post(client: httpx.Client, payload: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post("/v1/messages", json=payload, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["request-id"].startswith("req_")
    return response.json()


def ledger(client: httpx.Client) -> dict[str, Any]:
    return client.get("/_ledger").json()


# --- token accounting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "sent", "seen", "image_tokens"),
    [
        (HAIKU, (1000, 1000), None, 1296),
        (HAIKU, (3840, 2160), (1456, 819), 1560),
        (OPUS, (3840, 2160), (2576, 1449), 4784),
        (HAIKU, (1456, 819), None, 1560),  # already at its native size: left as it is
        (OPUS, (2576, 1449), None, 4784),
    ],
)
def test_images_cost_their_patches_at_the_models_native_size(
    client: httpx.Client, model: str, sent: tuple[int, int], seen: tuple[int, int] | None, image_tokens: int
) -> None:
    text = "Describe it. nonce=n1"
    message = post(client, ask(image_block(b64_image(*sent)), {"type": "text", "text": text}, model=model))
    f100 = 130  # both models use the newer tokenizer
    expected = (
        tokens.MESSAGE_OVERHEAD + tokens.IMAGE_BLOCK_OVERHEAD + image_tokens + tokens.text_tokens(text, f100)
    )
    assert message["usage"]["input_tokens"] == expected
    book = ledger(client)
    assert book["image_tokens"] == image_tokens
    [image] = book["images"]
    assert (image["width"], image["height"], image["tokens"]) == (*sent, image_tokens)
    assert image["resized_to"] == (list(seen) if seen else None)
    assert book["images_resized"] == (1 if seen else 0)


def test_text_tokens_follow_the_models_tokenizer_factor(client: httpx.Client) -> None:
    text = ("Describe the picture. " * 20).strip()  # 4 pieces a sentence: 80 units
    old = post(client, ask({"type": "text", "text": text}, model="claude-haiku-4-5"))
    new = post(client, ask({"type": "text", "text": text}))
    assert old["usage"]["input_tokens"] == tokens.MESSAGE_OVERHEAD + 80
    assert new["usage"]["input_tokens"] == tokens.MESSAGE_OVERHEAD + 104  # 1.3x on the newer one


def test_count_tokens_counts_the_same_and_charges_nothing(client: httpx.Client) -> None:
    payload = ask(
        image_block(b64_image(3840, 2160)),
        {"type": "text", "text": "hi nonce=c1"},
        system="Be brief.",
        tools=[TOOL],
    )
    counted = client.post(
        "/v1/messages/count_tokens", json={k: v for k, v in payload.items() if k != "max_tokens"}
    )
    assert counted.status_code == 200, counted.text
    assert counted.json() == {"input_tokens": counted.json()["input_tokens"]}
    book = ledger(client)
    assert (book["input_tokens"], book["images"], book["charges_by_nonce"]) == (0, [], {})
    assert post(client, payload)["usage"]["input_tokens"] == counted.json()["input_tokens"]


def test_the_ledger_bills_what_usage_says(client: httpx.Client) -> None:
    totals = {"input": 0, "output": 0}
    for i in range(3):
        usage = post(client, ask({"type": "text", "text": f"row nonce=r{i}"}))["usage"]
        totals["input"] += usage["input_tokens"]
        totals["output"] += usage["output_tokens"]
    book = ledger(client)
    assert (book["input_tokens"], book["output_tokens"]) == (totals["input"], totals["output"])
    assert book["charges_by_nonce"] == {"r0": 1, "r1": 1, "r2": 1}
    assert book["double_charged"] == []
    assert book["requests"]["POST /v1/messages"] == {"200": 3}


# --- answers -------------------------------------------------------------------------------------


def test_the_answer_describes_each_image_and_echoes_nonces(client: httpx.Client) -> None:
    message = post(
        client,
        ask(
            {"type": "text", "text": "Image 1:"},
            image_block(b64_image(320, 200, colour=(200, 30, 60))),
            {"type": "text", "text": "Image 2:"},
            image_block(b64_image(64, 64, "JPEG", (10, 120, 250)), "image/jpeg"),
            {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png?w=800&h=600"}},
            {"type": "text", "text": "caption these nonce=alpha-1 and nonce=beta.2 (again nonce=alpha-1)"},
            system="nonce=sys",
        ),
    )
    [block] = message["content"]
    text = block["text"]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    assert text.startswith("Received 3 images.")
    assert "Image 1: 320x200 image/png (base64), mean colour #c81e3c." in text
    assert "Image 2: 64x64 image/jpeg (base64), mean colour #" in text
    jpeg_hex = text.split("Image 2: 64x64 image/jpeg (base64), mean colour #")[1][:6]
    got = [int(jpeg_hex[i : i + 2], 16) for i in (0, 2, 4)]
    assert all(abs(g - w) <= 3 for g, w in zip(got, (10, 120, 250), strict=True)), jpeg_hex
    assert "Image 3: 800x600 image/png (url), not fetched." in text
    assert text.endswith("nonce=sys nonce=alpha-1 nonce=beta.2")
    assert message["usage"]["output_tokens"] == tokens.text_tokens(text, 130)


def test_max_tokens_cuts_the_answer(client: httpx.Client) -> None:
    payload = ask(image_block(), {"type": "text", "text": "nonce=cut-me"}, max_tokens=5)
    message = post(client, payload)
    assert message["stop_reason"] == "max_tokens"
    # the answer would be "Received 1 image. ..."; at 1.3x, 5 tokens hold 3 units: "Received",
    # " ", "1" (digits do not take the space before them), and a cut answer bills its whole budget
    assert message["usage"]["output_tokens"] == 5
    assert message["content"][0]["text"] == "Received 1"
    assert tokens.text_tokens("Received 1 ", 130) > 5
    assert "nonce" not in message["content"][0]["text"]
    empty = post(client, {**payload, "max_tokens": 0})
    assert (empty["content"], empty["stop_reason"], empty["usage"]["output_tokens"]) == ([], "max_tokens", 0)


def test_a_stop_sequence_ends_the_answer(client: httpx.Client) -> None:
    message = post(
        client, ask(image_block(), {"type": "text", "text": "nonce=n"}, stop_sequences=["mean colour", "zzz"])
    )
    assert message["stop_reason"] == "stop_sequence"
    assert message["stop_sequence"] == "mean colour"
    assert message["content"][0]["text"] == "Received 1 image. Image 1: 64x48 image/png (base64), "


TOOL = {
    "name": "record_caption",
    "description": "Store a caption",
    "input_schema": {
        "type": "object",
        "properties": {"caption": {"type": "string"}},
        "required": ["caption"],
    },
}

RICH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "$defs": {
        "box": {
            "type": "object",
            "required": ["x", "y"],
            "additionalProperties": False,
            "properties": {
                "x": {"type": "integer", "minimum": 0},
                "y": {"type": "integer", "exclusiveMinimum": 10},
            },
        },
        "pair": {
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
    "properties": {
        "caption": {"type": "string", "minLength": 3, "maxLength": 2000},
        "label": {"enum": ["cat", "dog"]},
        "kind": {"const": "photo"},
        "score": {"type": "number", "minimum": 0.5, "maximum": 1},
        "count": {"type": "integer", "minimum": 3, "multipleOf": 2},
        "when": {"type": "string", "format": "date-time"},
        "code": {"type": "string", "pattern": "^[0-9]+$"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "uniqueItems": True},
        "boxes": {"type": "array", "items": {"$ref": "#/$defs/box"}},
        "flag": {"type": ["boolean", "null"]},
        "maybe": {"anyOf": [{"type": "null"}, {"type": "integer", "maximum": -5}]},
        "both": {"allOf": [{"$ref": "#/$defs/pair"}]},
    },
    "required": ["caption", "label", "score", "count", "tags", "boxes", "both"],
    "additionalProperties": False,
}


def test_a_forced_tool_answers_with_input_that_fits_its_schema(client: httpx.Client) -> None:
    tool = {**TOOL, "input_schema": RICH_SCHEMA}
    other = {**TOOL, "name": "unused"}
    message = post(
        client,
        ask(
            image_block(),
            {"type": "text", "text": "nonce=t1"},
            model="claude-haiku-4-5",
            tools=[other, tool],
            tool_choice={"type": "tool", "name": "record_caption"},
        ),
    )
    assert message["stop_reason"] == "tool_use"
    [block] = message["content"]
    assert block["type"] == "tool_use" and block["name"] == "record_caption"
    assert block["id"].startswith("toolu_")
    jsonschema.validate(block["input"], RICH_SCHEMA)
    assert "nonce=t1" in block["input"]["caption"]
    expected = tokens.text_tokens(tokens.tool_use_text("record_caption", block["input"]), 100)
    assert message["usage"]["output_tokens"] == expected
    any_tool = post(client, ask({"type": "text", "text": "x"}, tools=[TOOL], tool_choice={"type": "any"}))
    assert any_tool["content"][0]["name"] == "record_caption"


def test_auto_tool_choice_answers_in_text(client: httpx.Client) -> None:
    message = post(client, ask({"type": "text", "text": "x"}, tools=[TOOL]))
    assert message["content"][0]["type"] == "text" and message["stop_reason"] == "end_turn"


def test_structured_output_is_json_that_fits_the_format(client: httpx.Client) -> None:
    schema = {k: v for k, v in RICH_SCHEMA.items()}
    message = post(
        client,
        ask(
            image_block(),
            {"type": "text", "text": "nonce=s1"},
            model="claude-sonnet-5-5",
            output_config={"effort": "low", "format": {"type": "json_schema", "schema": schema}},
        ),
    )
    value = json.loads(message["content"][0]["text"])
    jsonschema.validate(value, schema)
    assert "nonce=s1" in value["caption"]


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object"},
        {
            "type": "object",
            "properties": {"n": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
            "required": ["n"],
        },
        {"type": "object", "properties": {"s": {"type": "string", "maxLength": 4}}, "required": ["s"]},
        {"type": "object", "properties": {"tree": {"$ref": "#"}}, "required": []},
        {
            "type": "object",
            "properties": {
                "pair": {
                    "type": "array",
                    "prefixItems": [{"type": "integer"}, {"type": "string", "format": "email"}],
                    "maxItems": 2,
                }
            },
        },
        {"type": "object", "additionalProperties": {"type": "integer"}, "required": ["k"]},
        {
            "type": "object",
            "properties": {
                "both": {
                    "allOf": [
                        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                        {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
                    ]
                }
            },
            "required": ["both"],
        },
    ],
)
def test_generated_instances_fit_their_schema(schema: dict[str, Any]) -> None:
    jsonschema.validate(instance(schema, "filler text"), schema)


# --- prompt caching ------------------------------------------------------------------------------


def test_a_cache_breakpoint_writes_then_reads(client: httpx.Client) -> None:
    system = [
        {
            "type": "text",
            "text": "Caption the image in one line. " * 80,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    first = post(client, ask({"type": "text", "text": "nonce=a"}, system=system))["usage"]
    prefix = tokens.text_tokens(system[0]["text"], 130)
    assert prefix >= 512  # haiku-5-5's minimum cacheable prompt
    assert (first["cache_creation_input_tokens"], first["cache_read_input_tokens"]) == (prefix, 0)
    assert first["cache_creation"] == {"ephemeral_5m_input_tokens": prefix, "ephemeral_1h_input_tokens": 0}
    second = post(client, ask({"type": "text", "text": "nonce=b"}, system=system))["usage"]
    assert (second["cache_creation_input_tokens"], second["cache_read_input_tokens"]) == (0, prefix)
    assert second["input_tokens"] == first["input_tokens"]
    short = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    below = post(client, ask({"type": "text", "text": "x"}, system=short))["usage"]
    assert (below["cache_creation_input_tokens"], below["cache_read_input_tokens"]) == (0, 0)


def test_cached_prefixes_expire_after_their_ttl(simulator: RunningSimulator) -> None:
    now = [0.0]
    cache = PromptCache(clock=lambda: now[0])
    text = {"type": "text", "text": "word " * 2000, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    checked = check_body(ask(text), simulator.sim, betas=frozenset())
    assert cache.peek(checked) == 0 and not cache.entries  # peeking writes nothing
    first = cache.use(checked)
    w1 = first.write_1h
    assert (first.read, first.write_5m) == (0, 0) and w1 > 0
    now[0] = 3599.0
    assert cache.peek(checked) == w1
    assert cache.use(checked) == CacheUse(read=w1, breakpoints=1)
    now[0] = 3599.0 + 3601.0
    assert cache.use(checked) == CacheUse(write_1h=w1, breakpoints=1)


# --- errors, betas, platforms, dates -------------------------------------------------------------


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["request_id"] == response.headers["request-id"]
    assert body["error"]["type"] == facts.ERROR_TYPES[status]
    return body["error"]["message"]


def test_validation_errors_come_back_in_the_api_shape(client: httpx.Client) -> None:
    bad = ask(image_block(media_type="image/jpeg"))
    message = error_of(client.post("/v1/messages", json=bad), 400)
    assert message.startswith("messages.0.content.0.source.media_type: ")
    assert error_of(client.post("/v1/messages", content=b"{not json"), 400)
    assert ledger(client)["input_tokens"] == 0


def test_unknown_betas_are_refused_and_known_ones_pass(client: httpx.Client) -> None:
    payload = ask({"type": "text", "text": "x"})
    message = error_of(
        client.post("/v1/messages", json=payload, headers={"anthropic-beta": "made-up-2030-01-01"}), 400
    )
    assert "made-up-2030-01-01" in message
    ok = client.post(
        "/v1/messages",
        json=payload,
        headers={"anthropic-beta": f"{facts.FILES_BETA},token-counting-2024-11-01"},
    )
    assert ok.status_code == 200


def test_file_sources_through_the_endpoint(
    simulator: RunningSimulator, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    raw = base64.b64decode(b64_image(900, 700))
    monkeypatch.setattr(simulator.sim.files, "image_bytes", {"file_abc": (raw, "image/png")}.get)
    block = {"type": "image", "source": {"type": "file", "file_id": "file_abc"}}
    message = post(client, ask(block), **{"anthropic-beta": facts.FILES_BETA})
    assert "Image 1: 900x700 image/png (file)" in message["content"][0]["text"]
    assert ledger(client)["images"][0]["b64_bytes"] == facts.b64_len(len(raw))
    gone = ask({"type": "image", "source": {"type": "file", "file_id": "file_gone"}})
    assert "file_gone" in error_of(
        client.post("/v1/messages", json=gone, headers={"anthropic-beta": facts.FILES_BETA}), 404
    )
    # No beta header (anthropic 2.16 sends none): the same answer.
    plain = post(client, ask(block))
    assert "Image 1: 900x700 image/png (file)" in plain["content"][0]["text"]


def test_bedrock_takes_base64_only_and_five_megabytes(make_simulator: Any) -> None:
    handle = make_simulator(SimConfig(platform="bedrock"))
    with httpx.Client(base_url=handle.base_url, headers=HEADERS) as c:
        url = ask({"type": "image", "source": {"type": "url", "url": "https://x/a.png"}})
        assert "bedrock" in error_of(c.post("/v1/messages", json=url), 400)
        assert c.post("/v1/messages", json=ask(image_block())).status_code == 200


def test_a_retired_model_is_404_after_its_date(make_simulator: Any) -> None:
    before = make_simulator(SimConfig(today=dt.date(2026, 11, 30)))
    after = make_simulator(SimConfig(today=dt.date(2026, 12, 1)))
    payload = ask({"type": "text", "text": "x"}, model="claude-sonnet-4-5-20250929")
    with httpx.Client(headers=HEADERS) as c:
        assert c.post(f"{before.base_url}/v1/messages", json=payload).status_code == 200
        assert "claude-sonnet-4-5" in error_of(c.post(f"{after.base_url}/v1/messages", json=payload), 404)


def test_an_over_size_body_is_413(client: httpx.Client) -> None:
    big = orjson.dumps(ask({"type": "text", "text": "x" * facts.MAX_REQUEST_BODY_BYTES}))
    response = client.post("/v1/messages", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


# --- the entry point the batch runner uses -------------------------------------------------------


def test_process_and_record_are_the_same_path_without_a_server(simulator: RunningSimulator) -> None:
    sim = simulator.sim
    processed = process(
        ask(image_block(b64_image(3840, 2160)), {"type": "text", "text": "nonce=b7"}), sim, betas=frozenset()
    )
    assert processed.nonces == ["b7"]
    assert processed.image_tokens == 1560
    assert processed.input_tokens == processed.message["usage"]["input_tokens"]
    assert processed.images[0].resized_to == (1456, 819)
    assert sim.ledger.input_tokens == 0  # nothing billed until recorded
    record(sim, processed)
    assert sim.ledger.charges_by_nonce["b7"] == 1
    assert sim.ledger.image_tokens == 1560 and sim.ledger.images_resized == 1
    with pytest.raises(ApiError) as info:
        process({"model": HAIKU}, sim, betas=frozenset(), path="requests.2.params")
    assert info.value.message == "requests.2.params.max_tokens: Field required"
