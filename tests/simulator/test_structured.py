"""Structured output (``output_config.format``) through real sockets: the API's refusals of a
schema, answers that fit it, the tokens it costs, and the answer faults (refusal, mismatch,
mismatch_first); live, in batches and in count_tokens. The official SDK is the oracle."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, Literal

import anthropic
import httpx
import jsonschema
import pydantic
import pytest
from anthropic.lib._parse._transform import transform_schema

from batcher import facts
from batcher.simulator import tokens
from batcher.simulator.answers import REFUSAL_TEXT, instance
from batcher.simulator.config import BatchClock, Faults, SimConfig
from batcher.simulator.core import api_registry
from batcher.simulator.schemas import ADDITIONAL_PROPERTIES
from batcher.simulator.server import RunningSimulator
from tests.simulator.test_batches import create, results, wait_ended
from tests.simulator.test_validate import b64_image, image_block

HEADERS = {"x-api-key": "test", "anthropic-version": facts.API_VERSION}
SONNET = "claude-sonnet-5-5"  # takes structured outputs
HAIKU4 = "claude-haiku-4-5"  # takes forced tool use
Check = Callable[[Any, str], None]

#: A captioning user's schema, as written (constraints, no additionalProperties).
USER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "caption": {"type": "string", "minLength": 1},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 2},
        "people": {"type": "integer", "minimum": 0},
        "sharpness": {"type": "number", "minimum": 0, "maximum": 1},
        "outdoor": {"type": "boolean"},
        "mood": {"enum": ["calm", "busy"]},
        "kind": {"const": "photo"},
        "taken": {"type": "string", "format": "date"},
        "subject": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "notes": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["name", "notes"],
        },
        "boxes": {"type": "array", "items": {"$ref": "#/$defs/box"}},
        "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["caption", "tags", "people", "sharpness", "outdoor", "mood", "subject", "boxes", "maybe"],
    "$defs": {
        "box": {
            "type": "object",
            "properties": {"label": {"type": "string"}, "x": {"type": "integer", "minimum": 0}},
            "required": ["label", "x"],
        }
    },
}
#: As sent: the SDK's strict transform (additionalProperties false, constraints in descriptions).
WIRE_SCHEMA = transform_schema(USER_SCHEMA)
F100 = tokens.factor_hundredths(api_registry()[SONNET])


def fmt(schema: dict[str, Any]) -> dict[str, Any]:
    return {"format": {"type": "json_schema", "schema": schema}}


def body(nonce: str, schema: dict[str, Any] = WIRE_SCHEMA, **extra: Any) -> dict[str, Any]:
    content = [image_block(b64_image(120, 80)), {"type": "text", "text": f"Tag the image. nonce={nonce}"}]
    return {
        "model": SONNET,
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": content}],
        "output_config": fmt(schema),
        **extra,
    }


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


@pytest.fixture
def client(simulator: RunningSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=simulator.base_url, headers=HEADERS, timeout=30) as c:
        yield c


def post(client: httpx.Client, payload: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/messages", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def refused(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return str(error["message"])


# --- what the API refuses -------------------------------------------------------------------------


def test_a_schema_without_additional_properties_false_is_the_apis_400(client: httpx.Client) -> None:
    message = refused(client.post("/v1/messages", json=body("r1", USER_SCHEMA)))
    assert message == (
        "output_config.format.schema: For 'object' type, "
        "'additionalProperties' must be explicitly set to false"
    )
    nested = json.loads(json.dumps(WIRE_SCHEMA))
    del nested["properties"]["subject"]["additionalProperties"]
    assert refused(client.post("/v1/messages", json=body("r2", nested))).endswith(ADDITIONAL_PROPERTIES)
    count_body = {k: v for k, v in body("r3", USER_SCHEMA).items() if k != "max_tokens"}
    counted = client.post("/v1/messages/count_tokens", json=count_body)
    assert refused(counted).startswith("output_config.format.schema: For 'object' type")


def test_a_root_that_is_no_object_or_a_ref_that_does_not_resolve_is_refused(client: httpx.Client) -> None:
    array = {"type": "array", "items": {"type": "string"}}
    assert refused(client.post("/v1/messages", json=body("r4", array))) == (
        "output_config.format.schema: the root schema must be of type 'object'"
    )
    dangling = {**WIRE_SCHEMA, "$defs": {}}
    assert refused(client.post("/v1/messages", json=body("r5", dangling))).startswith(
        "output_config.format.schema: $ref '#/$defs/box' does not resolve"
    )


def test_in_a_batch_a_bad_schema_is_that_requests_errored_line(
    make_simulator: Callable[..., RunningSimulator],
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.3)))
    with httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=30) as c:
        requests = [
            {"custom_id": "good", "params": body("b1")},
            {"custom_id": "bad", "params": body("b2", USER_SCHEMA)},
        ]
        lines = {
            line["custom_id"]: line["result"] for line in results(c, wait_ended(c, create(c, requests)["id"]))
        }
    assert lines["good"]["type"] == "succeeded"
    jsonschema.validate(json.loads(lines["good"]["message"]["content"][0]["text"]), USER_SCHEMA)
    assert lines["bad"]["type"] == "errored"
    error = lines["bad"]["error"]["error"]
    assert error["type"] == "invalid_request_error"
    # a result line names the path within its params, as other bad params there do
    assert error["message"] == f"output_config.format.schema: {ADDITIONAL_PROPERTIES}"


def test_tools_need_additional_properties_false_only_when_strict(client: httpx.Client) -> None:
    tool = {"name": "tag", "description": "Tag it.", "input_schema": USER_SCHEMA}
    ask = {
        "model": HAIKU4,
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": "Tag it. nonce=t1"}],
        "tools": [tool],
        "tool_choice": {"type": "tool", "name": "tag"},
    }
    message = post(client, ask)
    assert message["stop_reason"] == "tool_use"
    jsonschema.validate(message["content"][0]["input"], USER_SCHEMA)
    strict = {**ask, "tools": [{**tool, "strict": True}]}
    assert (
        refused(client.post("/v1/messages", json=strict)) == f"tools.0.input_schema: {ADDITIONAL_PROPERTIES}"
    )
    closed = {**ask, "tools": [{**tool, "strict": True, "input_schema": WIRE_SCHEMA}]}
    assert post(client, closed)["stop_reason"] == "tool_use"


# --- answers that fit -----------------------------------------------------------------------------


def test_the_answer_is_compact_json_that_fits_the_users_schema(client: httpx.Client, check: Check) -> None:
    message = post(client, body("fit-1"))
    check(message, "Message")
    assert message["stop_reason"] == "end_turn" and message["stop_details"] is None
    [block] = message["content"]
    assert block["type"] == "text"
    value = json.loads(block["text"])
    assert block["text"] == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    # the constraints the SDK moved into descriptions are followed, as a model reads them
    jsonschema.validate(value, USER_SCHEMA)
    assert value["mood"] == "calm" and value["kind"] == "photo" and value["taken"] == "2026-01-01"
    # free strings describe the image and echo the row's nonce, nested and in arrays too
    for key in ("caption", "maybe"):
        assert "120x80 image/png (base64)" in value[key] and "nonce=fit-1" in value[key]
    assert all(
        "nonce=fit-1" in s for s in [*value["tags"], value["subject"]["name"], *value["subject"]["notes"]]
    )
    assert "nonce=fit-1" in value["boxes"][0]["label"]
    assert len(set(value["tags"])) == len(value["tags"]) >= 2
    assert post(client, body("fit-1"))["content"] == message["content"]  # deterministic
    used = tokens.text_tokens(block["text"], F100)
    assert message["usage"]["output_tokens"] == used


def test_a_tight_max_tokens_cuts_the_json(client: httpx.Client) -> None:
    message = post(client, body("cut-1", max_tokens=12))
    assert message["stop_reason"] == "max_tokens" and message["usage"]["output_tokens"] == 12
    text = message["content"][0]["text"]
    assert text.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_the_schema_costs_input_tokens_everywhere(client: httpx.Client, simulator: RunningSimulator) -> None:
    plain = {k: v for k, v in body("tok-1").items() if k not in ("output_config", "max_tokens")}
    with_schema = {**plain, "output_config": fmt(WIRE_SCHEMA)}
    base = client.post("/v1/messages/count_tokens", json=plain).json()["input_tokens"]
    more = client.post("/v1/messages/count_tokens", json=with_schema).json()["input_tokens"]
    schema_cost = tokens.OUTPUT_FORMAT_OVERHEAD + tokens.text_tokens(
        tokens.output_format_text(WIRE_SCHEMA), F100
    )
    assert more - base == schema_cost > tokens.OUTPUT_FORMAT_OVERHEAD
    # the same schema with its keys in another order costs the same
    shuffled = json.loads(json.dumps(WIRE_SCHEMA, sort_keys=True))
    again = client.post("/v1/messages/count_tokens", json={**plain, "output_config": fmt(shuffled)})
    assert again.json()["input_tokens"] == more
    # and a message bills what count_tokens said
    assert post(client, body("tok-1"))["usage"]["input_tokens"] == more


# --- answer faults --------------------------------------------------------------------------------


def test_a_refusal_is_an_answer_with_stop_reason_refusal(
    make_simulator: Callable[..., RunningSimulator], check: Check
) -> None:
    sim = make_simulator(SimConfig(faults=Faults(refusal=1.0)))
    with httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=30) as c:
        message = post(c, body("ref-1"))
        plain = post(c, {**body("ref-2"), "output_config": {"effort": "low"}})
        ledger = c.get("/_ledger").json()
    check(message, "Message")
    assert message["stop_reason"] == "refusal"
    assert message["stop_details"] == {"type": "refusal", "category": None, "explanation": None}
    assert message["content"] == [{"type": "text", "text": REFUSAL_TEXT, "citations": None}]
    assert message["usage"]["output_tokens"] == tokens.text_tokens(REFUSAL_TEXT, F100) > 0
    assert plain["stop_reason"] == "refusal"  # not only structured requests
    assert ledger["faults"]["refusal"] == 2 and ledger["charges_by_nonce"] == {"ref-1": 1, "ref-2": 1}


def test_a_mismatch_fits_the_wire_schema_but_not_the_users(
    make_simulator: Callable[..., RunningSimulator],
) -> None:
    sim = make_simulator(SimConfig(faults=Faults(mismatch=1.0)))
    with httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=30) as c:
        value = json.loads(post(c, body("mis-1"))["content"][0]["text"])
        plain = post(c, {**body("mis-2"), "output_config": {"effort": "low"}})
    jsonschema.validate(value, WIRE_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(value, USER_SCHEMA)
    assert value["people"] == -1 and value["sharpness"] == -1.5 and value["caption"] == ""
    assert value["mood"] == "calm" and value["kind"] == "photo" and value["taken"] == "2026-01-01"
    assert plain["stop_reason"] == "end_turn" and "nonce=mis-2" in plain["content"][0]["text"]


def test_mismatch_first_breaks_a_rows_first_answer_and_the_re_ask_fits(
    simulator: RunningSimulator, client: httpx.Client
) -> None:
    assert client.post("/_control", json={"faults": {"mismatch_first": True}}).json() == {"ok": True}
    first = json.loads(post(client, body("row-1"))["content"][0]["text"])
    other = json.loads(post(client, body("row-2"))["content"][0]["text"])
    again = json.loads(post(client, body("row-1"))["content"][0]["text"])
    for broken in (first, other):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, USER_SCHEMA)
    jsonschema.validate(again, USER_SCHEMA)
    assert simulator.sim.ledger.faults["mismatch"] == 2
    bad = client.post("/_control", json={"faults": {"mismatch_first": "yes"}})
    assert refused(bad).startswith("faults.mismatch_first: ")


def test_answer_faults_apply_inside_batches(make_simulator: Callable[..., RunningSimulator]) -> None:
    sim = make_simulator(SimConfig(faults=Faults(refusal=1.0), batches=BatchClock(duration_s=0.3)))
    with httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=30) as c:
        requests = [{"custom_id": f"r{i}", "params": body(f"bat-{i}")} for i in range(3)]
        lines = results(c, wait_ended(c, create(c, requests)["id"]))
    assert [line["result"]["message"]["stop_reason"] for line in lines] == ["refusal"] * 3


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"refusal": 2}, "faults.refusal: a share must be within 0..1"),
        ({"refusal": 0.5, "mismatch": 0.7}, "refusal and mismatch add up to 1.2"),
    ],
)
def test_control_refuses_impossible_answer_faults(client: httpx.Client, changes: Any, says: str) -> None:
    assert says in refused(client.post("/_control", json={"faults": changes}))


# --- the official SDK as the oracle ---------------------------------------------------------------


class Box(pydantic.BaseModel):
    label: str
    x: int = pydantic.Field(ge=0)


class Tags(pydantic.BaseModel):
    caption: str = pydantic.Field(min_length=1)
    tags: list[str] = pydantic.Field(min_length=2)
    people: int = pydantic.Field(ge=0)
    mood: Literal["calm", "busy"]
    boxes: list[Box]
    maybe: str | None


@pytest.fixture
def sdk(simulator: RunningSimulator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=simulator.base_url, api_key="sk-test", max_retries=0) as c:
        yield c


def _content(nonce: str) -> list[Any]:
    source = {"type": "base64", "media_type": "image/png", "data": b64_image(64, 48)}
    return [{"type": "image", "source": source}, {"type": "text", "text": f"Tag it. nonce={nonce}"}]


def test_the_sdk_parses_a_structured_answer(sdk: anthropic.Anthropic) -> None:
    message = sdk.messages.create(
        model=SONNET,
        max_tokens=2000,
        messages=[{"role": "user", "content": _content("sdk-s1")}],  # type: ignore[typeddict-item]
        output_config={"format": {"type": "json_schema", "schema": WIRE_SCHEMA}},
    )
    assert message.stop_reason == "end_turn"
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    value = json.loads(block.text)
    jsonschema.validate(value, USER_SCHEMA)
    assert "64x48 image/png (base64)" in value["caption"] and "nonce=sdk-s1" in value["caption"]


def test_the_sdks_parse_returns_the_pydantic_model(sdk: anthropic.Anthropic) -> None:
    parsed = sdk.messages.parse(
        model=SONNET,
        max_tokens=2000,
        messages=[{"role": "user", "content": _content("sdk-p1")}],  # type: ignore[typeddict-item]
        output_format=Tags,
    )
    out = parsed.parsed_output
    assert isinstance(out, Tags)
    assert "nonce=sdk-p1" in out.caption and out.people >= 0 and len(out.tags) >= 2
    assert out.boxes and "nonce=sdk-p1" in out.boxes[0].label


def test_the_sdk_sees_a_bad_schema_as_bad_request(sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(
            model=SONNET,
            max_tokens=200,
            messages=[{"role": "user", "content": "Tag it. nonce=sdk-b1"}],
            output_config={"format": {"type": "json_schema", "schema": USER_SCHEMA}},
        )
    assert ADDITIONAL_PROPERTIES in str(caught.value)


def test_the_sdk_sees_a_refusal(make_simulator: Callable[..., RunningSimulator]) -> None:
    sim = make_simulator(SimConfig(faults=Faults(refusal=1.0)))
    with anthropic.Anthropic(base_url=sim.base_url, api_key="sk-test", max_retries=0) as c:
        message = c.messages.create(
            model=SONNET,
            max_tokens=200,
            messages=[{"role": "user", "content": "Tag it. nonce=sdk-r1"}],
            output_config={"format": {"type": "json_schema", "schema": WIRE_SCHEMA}},
        )
    assert message.stop_reason == "refusal"
    assert message.stop_details is not None and message.stop_details.type == "refusal"


@pytest.mark.parametrize("schema", [WIRE_SCHEMA, transform_schema(Tags)])
def test_generated_instances_of_sdk_schemas_fit_the_originals(schema: dict[str, Any]) -> None:
    original = USER_SCHEMA if schema is WIRE_SCHEMA else Tags.model_json_schema()
    jsonschema.validate(instance(schema, "filler nonce=x"), original)
