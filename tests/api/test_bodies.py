"""Request bodies: images before the prompt, labelled when several, valid against the schema."""

from __future__ import annotations

from batcher.api.bodies import (
    Example,
    ImagePart,
    RequestSettings,
    StructuredRequest,
    answer_text,
    betas_for,
    messages_body,
)
from batcher.core.cache import CachePoint
from batcher.models import load_registry

REG = load_registry()
PNG = "iVBORw0KGgo="


def test_one_image_then_the_prompt() -> None:
    body = messages_body(
        REG["claude-haiku-5-5"],
        RequestSettings(max_tokens=50),
        [ImagePart("base64", PNG, "image/png")],
        "Describe it",
    )
    content = body["messages"][0]["content"]
    assert [b["type"] for b in content] == ["image", "text"]
    assert content[1]["text"] == "Describe it"


def test_several_images_are_labelled_in_order() -> None:
    images = [ImagePart("url", "https://x/a.jpg"), ImagePart("file", "file_1")]
    content = messages_body(REG["claude-haiku-5-5"], RequestSettings(max_tokens=5), images, "Compare")[
        "messages"
    ][0]["content"]
    assert [b.get("text") or b["source"]["type"] for b in content] == [
        "Image 1:",
        "url",
        "Image 2:",
        "file",
        "Compare",
    ]
    assert betas_for(images, "files-api-2025-04-14") == ["files-api-2025-04-14"]
    assert betas_for(images[:1], "files-api-2025-04-14") == []


def test_sampling_params_only_where_the_model_takes_them() -> None:
    settings = RequestSettings(max_tokens=5, temperature=0.3, effort="low", system="Be brief")
    new = messages_body(REG["claude-haiku-5-5"], settings, [], "x")
    old = messages_body(REG["claude-haiku-4-5"], settings, [], "x")
    assert "temperature" not in new and old["temperature"] == 0.3
    assert new["output_config"] == {"effort": "low"} and new["system"] == "Be brief"


def test_bodies_validate_against_the_published_schema(check) -> None:  # type: ignore[no-untyped-def]
    settings = RequestSettings(max_tokens=5, effort="low", system="s", stop_sequences=["END"])
    images = [ImagePart("base64", PNG, "image/png"), ImagePart("url", "https://x/a.jpg")]
    check(messages_body(REG["claude-haiku-5-5"], settings, images, "p"), "CreateMessageParams")
    check(
        messages_body(
            REG["claude-haiku-4-5"],
            RequestSettings(max_tokens=5, temperature=0.5),
            [ImagePart("file", "file_1")],
            "p",
        ),
        "BetaCreateMessageParams",
    )


def test_answer_text_joins_text_and_takes_tool_input() -> None:
    text, tool = answer_text(
        {
            "content": [
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b"},
                {"type": "tool_use", "id": "t", "name": "n", "input": {"k": 1}},
            ]
        }
    )
    assert text == "ab" and tool == '{"k":1}'


def test_structured_bodies_validate_against_the_published_schema(check) -> None:  # type: ignore[no-untyped-def]
    from batcher.output.strict import strict_schema

    wire = strict_schema(
        {
            "type": "object",
            "properties": {"caption": {"type": "string", "maxLength": 50}, "tags": {"type": "array"}},
            "required": ["caption"],
        }
    )
    images = [ImagePart("base64", PNG, "image/png")]
    fmt = messages_body(
        REG["claude-haiku-5-5"],
        RequestSettings(max_tokens=50, effort="low"),
        images,
        "p",
        StructuredRequest("format", wire),
    )
    assert fmt["output_config"] == {"effort": "low", "format": {"type": "json_schema", "schema": wire}}
    check(fmt, "CreateMessageParams")
    tool = messages_body(
        REG["claude-haiku-4-5"], RequestSettings(max_tokens=50), images, "p", StructuredRequest("tool", wire)
    )
    assert tool["tool_choice"] == {"type": "tool", "name": "record_answer"}
    assert tool["tools"][0]["input_schema"] == wire and "output_config" not in tool
    check(tool, "CreateMessageParams")


def _examples() -> list[Example]:
    return [
        Example([ImagePart("base64", PNG, "image/png")], "Describe it", '{"caption": "a red bike"}'),
        Example([ImagePart("url", "https://x/b.jpg")], "Describe it", '{"caption": "a blue car"}'),
    ]


def test_examples_go_as_turns_before_the_rows_own_and_the_breakpoint_ends_them(check) -> None:  # type: ignore[no-untyped-def]
    point = CachePoint("1h", "examples", 2000)
    body = messages_body(
        REG["claude-haiku-5-5"],
        RequestSettings(max_tokens=50, system="Be factual"),
        [ImagePart("base64", PNG, "image/png")],
        "Describe it",
        examples=_examples(),
        cache=point,
    )
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == [{"type": "text", "text": '{"caption": "a red bike"}'}]
    assert msgs[3]["content"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    marked = [b for m in msgs for b in m["content"] if "cache_control" in b]
    assert len(marked) == 1 and body["system"] == "Be factual" and "cache_control" not in body
    check(body, "CreateMessageParams")


def test_without_examples_the_breakpoint_ends_the_system_prompt(check) -> None:  # type: ignore[no-untyped-def]
    body = messages_body(
        REG["claude-haiku-5-5"],
        RequestSettings(max_tokens=50, system="Be factual"),
        [ImagePart("base64", PNG, "image/png")],
        "p",
        cache=CachePoint("5m", "system", 600),
    )
    assert body["system"] == [
        {"type": "text", "text": "Be factual", "cache_control": {"type": "ephemeral", "ttl": "5m"}}
    ]
    assert not any("cache_control" in b for b in body["messages"][0]["content"])
    check(body, "CreateMessageParams")


def test_with_a_structured_tool_example_answers_are_tool_calls_each_answered_by_the_next_turn(check) -> None:  # type: ignore[no-untyped-def]
    wire = {"type": "object", "properties": {"caption": {"type": "string"}}, "additionalProperties": False}
    body = messages_body(
        REG["claude-haiku-4-5"],
        RequestSettings(max_tokens=50),
        [ImagePart("base64", PNG, "image/png")],
        "p",
        StructuredRequest("tool", wire),
        examples=_examples(),
        cache=CachePoint("5m", "examples", 3000),
    )
    msgs = body["messages"]
    calls = [b for m in msgs if m["role"] == "assistant" for b in m["content"]]
    assert [c["input"] for c in calls] == [{"caption": "a red bike"}, {"caption": "a blue car"}]
    results = [m["content"][0] for m in msgs[2::2]]
    assert [r["tool_use_id"] for r in results] == [c["id"] for c in calls]
    # The row's own turn opens with the last call's result: shared by every row, so it ends the prefix.
    assert msgs[-1]["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
    check(body, "CreateMessageParams")
