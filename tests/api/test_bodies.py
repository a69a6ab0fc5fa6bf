"""Request bodies: images before the prompt, labelled when several, valid against the schema."""

from __future__ import annotations

from batcher.api.bodies import ImagePart, RequestSettings, answer_text, betas_for, messages_body
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
    from batcher.api.bodies import StructuredRequest
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
