"""Structured output in the run core, without sockets: the mode decision, the answer typed (paid
error rows), re-asked answers added up, the summary line, the schema's tokens in the plan."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from batcher.api.bodies import ImagePart, RequestSettings, messages_body, structured_params
from batcher.config import ConfigError
from batcher.core import results
from batcher.core.outcomes import Counters, Prepared
from batcher.core.plan import Planner
from batcher.core.structured import (
    StructuredOutput,
    decide,
    output_line,
    structured_mode,
    supports_structured_outputs,
)
from batcher.cost import usage_cost
from batcher.models import load_registry
from batcher.output import OutputSpec
from batcher.output.strict import strict_schema
from batcher.records import ImageSent, Row
from batcher.tokens import SCHEMA_FRAMING, estimate_schema_tokens

REG = load_registry()
PROFILE = REG["claude-haiku-5-5"]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "caption": {"type": "string", "maxLength": 20},
        "count": {"type": "integer", "minimum": 0},
    },
    "required": ["caption", "count"],
}


def spec(retry_invalid: int = 1) -> OutputSpec:
    return OutputSpec(SCHEMA, strict_schema(SCHEMA), "flatten", retry_invalid, "inline")


def message(
    text: str | None = None, *, tool: Any = None, stop: str = "end_turn", out: int = 30
) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "text", "text": text})
    if tool is not None:
        content.append({"type": "tool_use", "id": "tu_1", "name": "record_answer", "input": tool})
    return {
        "id": "msg_1",
        "model": PROFILE.id,
        "stop_reason": stop,
        "content": content,
        "usage": {"input_tokens": 100, "output_tokens": out},
    }


def answered(msg: dict[str, Any], output: StructuredOutput | None, max_tokens: int = 64) -> Any:
    return results.answered(
        PROFILE,
        msg,
        row_id="r1",
        images=[],
        warnings=[],
        fields={},
        attempts=1,
        request_id="req",
        output=output,
        max_tokens=max_tokens,
    )


# --- which mode ---


@pytest.mark.parametrize(
    ("info", "caps", "forced", "want"),
    [
        ({"capabilities": {"structured_outputs": {"supported": True}}}, False, False, "format"),
        ({"capabilities": {"structured_outputs": {"supported": False}}}, True, True, "tool"),
        ({}, True, False, "format"),  # no Models API: the profile's capabilities
        ({}, False, True, "tool"),
    ],
)
def test_the_mode_follows_the_models_api_else_the_profile(
    info: dict[str, Any], caps: bool, forced: bool, want: str
) -> None:
    profile = dataclasses.replace(
        PROFILE,
        forced_tool_use=forced,
        capabilities={**PROFILE.capabilities, "structured_outputs": caps},
    )
    out = decide(spec(), "jobs/x.toml", profile, info)
    assert out is not None and out.mode == want
    assert supports_structured_outputs(info, profile) == (want == "format")


def test_neither_structured_outputs_nor_forced_tool_use_is_refused_naming_the_model() -> None:
    profile = dataclasses.replace(PROFILE, forced_tool_use=False)
    with pytest.raises(ConfigError) as err:
        structured_mode("jobs/x.toml", profile, supported=False)
    assert str(err.value) == (
        f"jobs/x.toml: request.model: {PROFILE.id} supports neither structured outputs nor forced "
        "tool use; output.schema cannot be enforced"
    )
    assert err.value.exit_code == 2
    assert decide(None, "jobs/x.toml", profile, {}) is None


# --- the request ---


def test_format_mode_sets_output_config_format_beside_effort_and_tool_mode_forces_one_tool() -> None:
    wire = strict_schema(SCHEMA)
    fmt = StructuredOutput(spec(), "format").request
    assert structured_params(fmt, "low") == {
        "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": wire}}
    }
    tool = structured_params(StructuredOutput(spec(), "tool").request)
    assert tool["tool_choice"] == {"type": "tool", "name": "record_answer"}
    assert [t["name"] for t in tool["tools"]] == ["record_answer"]
    assert tool["tools"][0]["input_schema"] == wire and "output_config" not in tool


def test_the_plan_carries_the_schema_and_counts_its_tokens() -> None:
    row = Row(id="r1", images=[], prompt="Describe", fields={}, index=0)
    sent = [ImageSent("https://x/a.jpg", transport="url")]
    prepared = Prepared(row, [ImagePart("url", "https://x/a.jpg")], sent, [])
    plain = Planner(PROFILE, RequestSettings(max_tokens=64), "files-beta").plan(prepared)
    for mode in ("format", "tool"):
        out = StructuredOutput(spec(), mode)  # type: ignore[arg-type]
        plan = Planner(PROFILE, RequestSettings(max_tokens=64), "files-beta", output=out).plan(prepared)
        added = estimate_schema_tokens(plan.body, PROFILE)
        assert added > SCHEMA_FRAMING
        assert plan.tokens.text == plain.tokens.text + added
        assert plan.worst_usd > plain.worst_usd
    assert estimate_schema_tokens(plain.body, PROFILE) == 0


# --- the answer ---


def test_a_valid_answer_is_ok_with_its_data_and_the_raw_json_in_text() -> None:
    out = StructuredOutput(spec(), "format")
    got = answered(message('{"caption": "a cat", "count": 1}'), out)
    assert got.status == "ok" and got.data == {"caption": "a cat", "count": 1}
    assert got.text == '{"caption": "a cat", "count": 1}'


def test_tool_mode_reads_the_tool_use_input() -> None:
    out = StructuredOutput(spec(), "tool")
    got = answered(message(tool={"caption": "a dog", "count": 2}), out)
    assert got.status == "ok" and got.data == {"caption": "a dog", "count": 2}
    assert got.text is not None and orjson.loads(got.text) == {"caption": "a dog", "count": 2}
    missing = answered(message("no tool here"), out)
    assert missing.error_type == "schema_mismatch" and "record_answer" in (missing.error_message or "")


@pytest.mark.parametrize(
    ("msg", "error_type", "says"),
    [
        (message("I can't help with that.", stop="refusal"), "refusal", "declined"),
        (message('{"caption": "a ca', stop="max_tokens", out=64), "max_tokens", "max_tokens = 64"),
        (message('{"caption": "far too long a caption here", "count": 1}'), "schema_mismatch", "caption"),
        (message('{"caption": "x", "count": -1}'), "schema_mismatch", "count"),
        (message("not json"), "schema_mismatch", "not JSON"),
    ],
)
def test_failures_are_typed_error_rows_that_carry_what_they_cost(
    msg: dict[str, Any], error_type: str, says: str
) -> None:
    got = answered(msg, StructuredOutput(spec(), "format"))
    assert got.status == "error" and got.error_type == error_type and got.data is None
    assert says in (got.error_message or ""), got.error_message
    assert got.cost_usd == usage_cost(PROFILE, msg["usage"], batch=False) and got.cost_usd > 0
    assert got.input_tokens == 100


def test_a_cut_off_answer_says_how_many_tokens_it_needed() -> None:
    got = answered(message('{"cap', stop="max_tokens", out=16), StructuredOutput(spec(), "format"), 16)
    assert got.error_message == (
        "the JSON was cut off at max_tokens = 16: the answer needed more than 16 output tokens "
        "(raise request.max_tokens)"
    )


def test_without_a_spec_a_free_text_answer_cut_at_max_tokens_stays_ok() -> None:
    got = answered(message("A cat on a m", stop="max_tokens"), None)
    assert got.status == "ok" and got.data is None and got.text == "A cat on a m"


def test_a_re_asked_row_adds_up_every_paid_answer() -> None:
    out = StructuredOutput(spec(), "format")
    first = answered(message('{"caption": "x", "count": -1}'), out)
    first.latency_s = 0.5
    second = answered(message('{"caption": "x", "count": 1}'), out)
    second.latency_s = 0.25
    total = results.combined(first, second)
    assert total.status == "ok" and total.data == {"caption": "x", "count": 1}
    assert total.attempts == 2 and total.input_tokens == 200 and total.output_tokens == 60
    assert total.cost_usd == pytest.approx((first.cost_usd or 0) * 2)
    assert total.latency_s == 0.75


def test_the_summary_line_names_each_type_and_the_re_asks() -> None:
    counters = Counters(reasks=3)
    counters.errors_by_type.update({"refusal": 1, "schema_mismatch": 2, "not_found": 5})
    assert output_line(counters) == (
        "batcher: structured output: refusal 1, max_tokens 0, schema_mismatch 2; re-asks 3"
    )


def test_messages_body_without_a_spec_is_unchanged() -> None:
    body = messages_body(PROFILE, RequestSettings(max_tokens=5, effort="low"), [], "p")
    assert body["output_config"] == {"effort": "low"} and "tools" not in body
