"""Messages body validation: every rule fails with the API's status, type and path; valid passes.

Pure tests of ``check_body`` against a simulator's state (no server needed).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import io
from typing import Any

import pytest
from PIL import Image

from batcher import facts
from batcher.simulator import tokens
from batcher.simulator.config import SimConfig
from batcher.simulator.core import Simulator
from batcher.simulator.errors import ApiError
from batcher.simulator.validate import URL_DEFAULT_SIZE, check_body
from batcher.simulator.wire import parse_betas

HAIKU = "claude-haiku-5-5"  # refuses sampling params, 600 images
OLD = "claude-haiku-4-5"  # accepts sampling params, 100 images, 200k context


def image_bytes(
    width: int = 64, height: int = 48, fmt: str = "PNG", colour: tuple[int, int, int] = (200, 30, 60)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, fmt)
    return buf.getvalue()


def b64_image(
    width: int = 64, height: int = 48, fmt: str = "PNG", colour: tuple[int, int, int] = (200, 30, 60)
) -> str:
    return base64.b64encode(image_bytes(width, height, fmt, colour)).decode()


def image_block(data: str | None = None, media_type: str = "image/png") -> dict[str, Any]:
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": data or b64_image()},
    }


def body(*content: Any, model: str = HAIKU, **extra: Any) -> dict[str, Any]:
    blocks = list(content) or [{"type": "text", "text": "hello"}]
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": blocks}], **extra}


@pytest.fixture
def sim() -> Simulator:
    return Simulator(SimConfig(today=dt.date(2026, 11, 1)))


def fails(
    sim: Simulator,
    payload: Any,
    path: str,
    *,
    status: int = 400,
    betas: frozenset[str] = frozenset(),
    count: bool = False,
    contains: str = "",
) -> ApiError:
    with pytest.raises(ApiError) as info:
        check_body(payload, sim, betas=betas, count=count)
    err = info.value
    assert err.status == status, err.message
    assert err.error_type == facts.ERROR_TYPES[status]
    assert err.message.startswith(f"{path}: "), err.message
    assert contains in err.message
    return err


def test_a_valid_body_passes_and_is_counted(sim: Simulator) -> None:
    checked = check_body(
        body(image_block(), {"type": "text", "text": "what is this?"}), sim, betas=frozenset()
    )
    assert checked.profile.id == HAIKU
    assert [(i.width, i.height, i.source) for i in checked.images] == [(64, 48, "base64")]
    assert checked.image_tokens == 3 * 2
    assert checked.input_tokens > checked.image_tokens


@pytest.mark.parametrize(
    ("mutate", "path", "contains"),
    [
        (lambda b: b.pop("model"), "model", "Field required"),
        (lambda b: b.update(model=7), "model", "valid string"),
        (lambda b: b.pop("max_tokens"), "max_tokens", "Field required"),
        (lambda b: b.update(max_tokens="9"), "max_tokens", "valid integer"),
        (lambda b: b.update(max_tokens=-1), "max_tokens", "greater than or equal to 0"),
        (lambda b: b.update(max_tokens=64_001), "max_tokens", "64000"),
        (lambda b: b.pop("messages"), "messages", "Field required"),
        (lambda b: b.update(messages=[]), "messages", "at least one"),
        (lambda b: b.update(messages={}), "messages", "valid list"),
        (lambda b: b.update(colour="red"), "colour", "Extra inputs are not permitted"),
        (lambda b: b["messages"][0].update(role="robot"), "messages.0.role", "'user' or 'assistant'"),
        (lambda b: b["messages"][0].update(role="assistant"), "messages.0.role", "first message"),
        (lambda b: b["messages"][0].update(name="x"), "messages.0.name", "Extra inputs"),
        (lambda b: b["messages"][0].pop("content"), "messages.0.content", "Field required"),
        (lambda b: b["messages"][0].update(content=""), "messages.0.content", "non-whitespace"),
        (lambda b: b["messages"][0].update(content=[]), "messages.0", "non-empty content"),
        (
            lambda b: b["messages"][0].update(content=[{"type": "text", "text": ""}]),
            "messages.0.content.0.text",
            "non-empty",
        ),
        (
            lambda b: b["messages"][0].update(content=[{"type": "text", "text": " \n"}]),
            "messages.0.content.0.text",
            "non-whitespace",
        ),
        (
            lambda b: b["messages"][0].update(content=[{"type": "text", "text": "a", "x": 1}]),
            "messages.0.content.0.x",
            "Extra inputs",
        ),
        (
            lambda b: b["messages"][0].update(content=[{"type": "video"}]),
            "messages.0.content.0.type",
            "does not match any of the expected tags",
        ),
        (
            lambda b: b["messages"][0].update(
                content=[{"type": "tool_use", "id": "a", "name": "n", "input": {}}]
            ),
            "messages.0.content.0.type",
            "not allowed in user messages",
        ),
        (lambda b: b.update(system=[{"type": "text", "text": ""}]), "system.0.text", "non-empty"),
        (lambda b: b.update(system=5), "system", "valid list"),
        (lambda b: b.update(stop_sequences="END"), "stop_sequences", "valid list"),
        (lambda b: b.update(stop_sequences=[" "]), "stop_sequences.0", "non-whitespace"),
        (lambda b: b.update(metadata={"user_id": "x" * 513}), "metadata.user_id", "512"),
        (lambda b: b.update(metadata={"session": "x"}), "metadata.session", "Extra inputs"),
        (lambda b: b.update(stream=True), "stream", "not supported by the simulator"),
        (lambda b: b.update(service_tier="fast"), "service_tier", "'auto' or 'standard_only'"),
        (lambda b: b.update(output_config={"effort": "extreme"}), "output_config.effort", "'low'"),
        (
            lambda b: b.update(output_config={"format": {"type": "json_schema"}}),
            "output_config.format.schema",
            "Field required",
        ),
        (lambda b: b.update(thinking={"type": "sometimes"}), "thinking.type", "expected tags"),
        (
            lambda b: b.update(thinking={"type": "enabled", "budget_tokens": 2048}),
            "thinking.type",
            "not supported on claude-haiku-5-5",
        ),
        (lambda b: b.update(cache_control={"type": "permanent"}), "cache_control.type", "expected tags"),
        (
            lambda b: b.update(cache_control={"type": "ephemeral", "ttl": "1d"}),
            "cache_control.ttl",
            "'5m' or '1h'",
        ),
    ],
)
def test_body_rules(sim: Simulator, mutate: Any, path: str, contains: str) -> None:
    payload = body()
    mutate(payload)
    fails(sim, payload, path, contains=contains)


def test_unknown_and_retired_models_are_404(sim: Simulator) -> None:
    fails(sim, body(model="claude-nonexistent-9"), "model", status=404)
    assert check_body(body(model="claude-sonnet-4-5"), sim, betas=frozenset())
    late = Simulator(SimConfig(today=dt.date(2026, 12, 1)))
    fails(late, body(model="claude-sonnet-4-5"), "model", status=404)
    fails(late, body(model="claude-sonnet-4-5-20250929"), "model", status=404)


def test_max_tokens_up_to_the_models_maximum_passes(sim: Simulator) -> None:
    assert check_body({**body(), "max_tokens": 64_000}, sim, betas=frozenset()).max_tokens == 64_000
    assert check_body({**body(model="claude-opus-4-8"), "max_tokens": 128_000}, sim, betas=frozenset())


def test_a_conversation_with_tool_turns_and_prefill_passes(sim: Simulator) -> None:
    payload = body(model=OLD)
    payload["messages"] += [
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": 1}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "found"}, image_block()],
                }
            ],
        },
        {"role": "assistant", "content": "The answer is"},
    ]
    checked = check_body(payload, sim, betas=frozenset())
    assert len(checked.images) == 1
    trailing = copy.deepcopy(payload)
    trailing["messages"][-1]["content"] = "The answer is "
    fails(sim, trailing, "messages.3", contains="trailing whitespace")


def test_sampling_parameters(sim: Simulator) -> None:
    fails(sim, body(temperature=0.2), "temperature", contains="not supported on claude-haiku-5-5")
    fails(sim, body(top_p=0.5), "top_p", contains="not supported")
    fails(sim, body(top_k=5), "top_k", contains="not supported")
    # only the defaults pass, for backwards compatibility; nothing near them
    assert check_body(body(temperature=1.0, top_p=1.0), sim, betas=frozenset())
    assert check_body(body(temperature=1, top_p=1), sim, betas=frozenset())
    for near in (0.99, 0.995, 0.999999):
        fails(sim, body(top_p=near), "top_p", contains="only its default, 1, is accepted")
    fails(sim, body(temperature=0.999), "temperature", contains="not supported")
    fails(sim, body(top_k=0), "top_k", contains="not supported")
    assert check_body(body(model=OLD, temperature=0.2, top_k=5), sim, betas=frozenset())
    assert check_body(body(model=OLD, top_p=0.5, top_k=5), sim, betas=frozenset())
    # the 4.x models that take them refuse temperature and top_p together (a 400 on the API)
    with pytest.raises(ApiError) as both:
        check_body(body(model=OLD, temperature=0.2, top_p=0.5), sim, betas=frozenset())
    assert both.value.status == 400 and both.value.message == (
        "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
    )
    fails(sim, body(model=OLD, temperature=1.5), "temperature", contains="between 0 and 1")
    fails(sim, body(model=OLD, temperature="hot"), "temperature", contains="valid number")


def test_effort_and_structured_output(sim: Simulator) -> None:
    schema = {"type": "object", "properties": {"caption": {"type": "string"}}, "additionalProperties": False}
    checked = check_body(
        body(output_config={"effort": "low", "format": {"type": "json_schema", "schema": schema}}),
        sim,
        betas=frozenset(),
    )
    assert checked.output_schema == schema
    fails(
        sim,
        body(model=OLD, output_config={"effort": "low"}),
        "output_config.effort",
        contains="not supported on claude-haiku-4-5",
    )


def test_thinking(sim: Simulator) -> None:
    assert check_body(body(thinking={"type": "adaptive"}), sim, betas=frozenset())
    assert check_body(
        body(model=OLD, thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2000),
        sim,
        betas=frozenset(),
    )
    fails(
        sim,
        body(model=OLD, thinking={"type": "enabled", "budget_tokens": 1000}, max_tokens=2000),
        "thinking.budget_tokens",
        contains="1024",
    )
    fails(
        sim,
        body(model=OLD, thinking={"type": "enabled", "budget_tokens": 4096}),
        "thinking.budget_tokens",
        contains="max_tokens",
    )


TOOL = {
    "name": "caption",
    "description": "Caption an image",
    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}


def test_tools_and_tool_choice(sim: Simulator) -> None:
    checked = check_body(
        body(model=OLD, tools=[TOOL], tool_choice={"type": "tool", "name": "caption"}), sim, betas=frozenset()
    )
    assert checked.forced_tool == "caption"
    any_choice = check_body(body(tools=[TOOL], tool_choice={"type": "any"}), sim, betas=frozenset())
    assert any_choice.forced_tool == "caption"
    auto = check_body(body(tools=[TOOL], tool_choice={"type": "auto"}), sim, betas=frozenset())
    assert auto.forced_tool is None
    fails(sim, body(tools=[{**TOOL, "name": "bad name"}]), "tools.0.name", contains="pattern")
    fails(sim, body(tools=[{"name": "x"}]), "tools.0.input_schema", contains="Field required")
    fails(sim, body(tools=[{**TOOL, "input_schema": {"type": "array"}}]), "tools.0.input_schema.type")
    fails(sim, body(tools=[TOOL, TOOL]), "tools", contains="unique")
    fails(sim, body(tools=[{**TOOL, "type": "web_search_20250305"}]), "tools.0.type")
    fails(sim, body(tools=[TOOL], tool_choice={"type": "tool", "name": "other"}), "tool_choice.name")
    fails(sim, body(tool_choice={"type": "any"}), "tool_choice", contains="at least one tool")
    fails(sim, body(tools=[TOOL], tool_choice={"type": "sometimes"}), "tool_choice.type")
    # forced tool use is refused where the profile says so, whatever the choice
    for choice in ({"type": "any"}, {"type": "tool", "name": "caption"}):
        fails(
            sim,
            body(model="claude-sonnet-5-5", tools=[TOOL], tool_choice=choice),
            "tool_choice.type",
            contains="output_config.format",
        )
    fails(
        sim,
        body(tools=[TOOL], tool_choice={"type": "any"}, thinking={"type": "adaptive"}),
        "tool_choice",
        contains="Thinking may not be enabled",
    )


def test_cache_control_shapes_and_count(sim: Simulator) -> None:
    marked = {"type": "text", "text": "a", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    assert check_body(body(*[marked] * 4), sim, betas=frozenset()).segments[-1].ttl == "1h"
    fails(sim, body(*[marked] * 5), "messages.0.content.4.cache_control", contains="maximum of 4")
    top = check_body(body(cache_control={"type": "ephemeral"}), sim, betas=frozenset())
    assert top.segments[-1].ttl == "5m"


# --- images --------------------------------------------------------------------------------------


def test_media_type_must_be_one_of_four_and_match_the_bytes(sim: Simulator) -> None:
    fails(
        sim,
        body(image_block(media_type="image/bmp")),
        "messages.0.content.0.source.media_type",
        contains="'image/jpeg', 'image/png', 'image/gif' or 'image/webp'",
    )
    fails(
        sim,
        body(image_block(media_type="image/jpeg")),
        "messages.0.content.0.source.media_type",
        contains="the data is image/png",
    )
    not_image = base64.b64encode(b"hello, world, not an image").decode()
    fails(sim, body(image_block(not_image)), "messages.0.content.0.source.media_type", contains="not a JPEG")
    for fmt, media_type in (("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")):
        checked = check_body(body(image_block(b64_image(fmt=fmt), media_type)), sim, betas=frozenset())
        assert checked.images[0].media_type == media_type


def test_base64_must_be_valid(sim: Simulator) -> None:
    fails(
        sim, body(image_block("not base64!!")), "messages.0.content.0.source.data", contains="Invalid base64"
    )
    fails(sim, body(image_block(b64_image()[:-3])), "messages.0.content.0.source.data")
    truncated = base64.b64encode(image_bytes()[:20]).decode()
    fails(
        sim,
        body(image_block(truncated)),
        "messages.0.content.0.source.data",
        contains="Could not process image",
    )


def test_base64_size_limit_per_model_and_platform(sim: Simulator) -> None:
    png = image_bytes()
    # Padding a PNG after its IEND keeps it a valid PNG of the same size.
    big = base64.b64encode(png + b"\0" * (6 * 1024 * 1024)).decode()
    assert check_body(body(image_block(big)), sim, betas=frozenset()).images[0].b64_bytes == len(big)
    bedrock = Simulator(SimConfig(platform="bedrock"))
    fails(
        bedrock,
        body(image_block(big)),
        "messages.0.content.0.source.data",
        contains="image exceeds 5 MB maximum",
    )
    huge = base64.b64encode(png + b"\0" * (8 * 1024 * 1024)).decode()
    fails(
        sim,
        body(image_block(huge)),
        "messages.0.content.0.source.data",
        contains=f"{len(huge)} bytes > 10485760 bytes",
    )


def test_pixel_limits(sim: Simulator) -> None:
    assert check_body(body(image_block(b64_image(8000, 10))), sim, betas=frozenset())
    fails(
        sim,
        body(image_block(b64_image(8001, 10))),
        "messages.0.content.0.source.data",
        contains="max allowed size: 8000 pixels",
    )
    many = [image_block(b64_image(2000, 20)) for _ in range(21)]
    assert len(check_body(body(*many), sim, betas=frozenset()).images) == 21
    many[13] = image_block(b64_image(2001, 20))
    err = fails(sim, body(*many), "messages.0.content.13.source.data")
    assert "many-image requests" in err.message and "2000 pixels" in err.message
    # at 20 images the many-image rule does not apply yet
    assert check_body(body(*many[:20]), sim, betas=frozenset())


def test_images_per_request_follow_the_profile(sim: Simulator) -> None:
    small = image_block(b64_image(8, 8))
    assert check_body(body(*[small] * 100, model=OLD), sim, betas=frozenset())
    fails(sim, body(*[small] * 101, model=OLD), "messages", contains="101 > 100")
    assert check_body(body(*[small] * 600), sim, betas=frozenset())
    fails(sim, body(*[small] * 601), "messages", contains="601 > 600")


def url_block(url: str) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "url", "url": url}}


def test_url_sources(sim: Simulator) -> None:
    checked = check_body(
        body(url_block("https://example.com/cat.webp?w=3000&h=2000"), url_block("http://example.com/plain")),
        sim,
        betas=frozenset(),
    )
    sized, plain = checked.images
    assert (sized.width, sized.height, sized.media_type, sized.raw) == (3000, 2000, "image/webp", None)
    assert (plain.width, plain.height, plain.media_type) == (*URL_DEFAULT_SIZE, "image/jpeg")
    fails(sim, body(url_block("ftp://example.com/a.png")), "messages.0.content.0.source.url")
    fails(
        sim,
        body(url_block("https://x/a.png?w=9000&h=10")),
        "messages.0.content.0.source.url",
        contains="8000 pixels",
    )
    vertex = Simulator(SimConfig(platform="vertex"))
    fails(
        vertex, body(url_block("https://x/a.png")), "messages.0.content.0.source.type", contains="only base64"
    )
    fails(
        sim,
        {k: v for k, v in body(url_block("https://x/a.png")).items() if k != "max_tokens"},
        "messages.0.content.0.source.type",
        count=True,
        contains="count_tokens",
    )


def test_file_sources(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    stored = {
        "file_ok": (image_bytes(300, 200), "image/png"),
        "file_pdf": (b"%PDF-1.4", "application/pdf"),
        "file_liar": (image_bytes(), "image/jpeg"),
    }
    monkeypatch.setattr(sim.files, "image_bytes", stored.get)
    beta = frozenset({facts.FILES_BETA})
    block = {"type": "image", "source": {"type": "file", "file_id": "file_ok"}}
    checked = check_body(body(block), sim, betas=beta)
    assert (checked.images[0].width, checked.images[0].source) == (300, "file")
    # With or without the Files beta header (issue 13: the current SDK sends none).
    assert check_body(body(block), sim, betas=frozenset()).images[0].source == "file"
    missing = {"type": "image", "source": {"type": "file", "file_id": "file_gone"}}
    fails(
        sim,
        body(missing),
        "messages.0.content.0.source.file_id",
        status=404,
        betas=beta,
        contains="file_gone",
    )
    pdf = {"type": "image", "source": {"type": "file", "file_id": "file_pdf"}}
    fails(sim, body(pdf), "messages.0.content.0.source.file_id", betas=beta, contains="not an image")
    liar = {"type": "image", "source": {"type": "file", "file_id": "file_liar"}}
    fails(
        sim, body(liar), "messages.0.content.0.source.file_id", betas=beta, contains="the data is image/png"
    )


def test_count_tokens_bodies(sim: Simulator) -> None:
    payload = body()
    fails(sim, payload, "max_tokens", count=True, contains="Extra inputs")
    del payload["max_tokens"]
    assert check_body(payload, sim, betas=frozenset(), count=True).input_tokens > 0


def test_error_paths_take_a_prefix(sim: Simulator) -> None:
    with pytest.raises(ApiError) as info:
        check_body(
            body(image_block(media_type="image/tiff")), sim, betas=frozenset(), path="requests.3.params"
        )
    assert info.value.message.startswith("requests.3.params.messages.0.content.0.source.media_type: ")


def test_betas() -> None:
    assert parse_betas([f"{facts.FILES_BETA}, token-counting-2024-11-01", ""]) == {
        facts.FILES_BETA,
        "token-counting-2024-11-01",
    }
    with pytest.raises(ApiError) as info:
        parse_betas(["files-api-2099-01-01"])
    assert info.value.status == 400 and "files-api-2099-01-01" in info.value.message


def test_prompt_too_long(sim: Simulator) -> None:
    long = "word " * 200_000  # a unit a word, and one for the trailing space: 200,001 > 200k
    assert tokens.text_tokens(long, 100) == 200_001
    fails(sim, body({"type": "text", "text": long}, model=OLD), "prompt is too long")
