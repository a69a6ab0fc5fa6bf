"""The one way an API message becomes a :class:`~batcher.records.Result`, online or from a batch.

With structured output (``output``): a ``stop_reason`` of ``refusal`` is a final ``refusal`` row, of
``max_tokens`` a final ``max_tokens`` row (the JSON is cut off); otherwise the answer's JSON (the
text block in ``format`` mode, the tool_use block's input in ``tool`` mode) is checked against the
user's schema: an ``ok`` row with ``data`` (and the raw JSON in ``text``), or a ``schema_mismatch``
row naming the problem (which the drivers re-ask while ``retry_invalid`` allows). These error rows
were paid for: they carry the answer's usage and cost, unlike an API 4xx's row. Without ``output``
the answer is taken as it is (a free-text answer cut at max_tokens is still ``ok``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from batcher import facts
from batcher.api.bodies import answer_text
from batcher.core.structured import StructuredOutput
from batcher.cost import cache_saving, usage_cost
from batcher.errors import MAX_TOKENS, REFUSAL, SCHEMA_MISMATCH
from batcher.models import ModelProfile
from batcher.records import ImageSent, Result


def answered(
    profile: ModelProfile,
    message: dict[str, Any],
    *,
    row_id: str,
    images: list[ImageSent],
    warnings: list[str],
    fields: dict[str, Any],
    attempts: int,
    request_id: str | None,
    latency_s: float | None = None,
    mode: Literal["online", "batch"] = "online",
    output: StructuredOutput | None = None,
    max_tokens: int | None = None,
) -> Result:
    """The row the API's message makes; its cost from its ``usage`` at the mode's price. Without
    ``output`` an ``ok`` row; with it, see the module doc (``max_tokens``: the request's, for the
    message of a cut-off answer)."""
    usage = message.get("usage") or {}
    text, tool_input = answer_text(message)
    result = Result(
        id=row_id,
        status="ok",
        text=text,
        tool_input=tool_input,
        model=message.get("model", profile.id),
        stop_reason=message.get("stop_reason"),
        input_tokens=usage.get("input_tokens"),
        output_tokens=usage.get("output_tokens"),
        cache_read_input_tokens=usage.get("cache_read_input_tokens"),
        cache_creation_input_tokens=usage.get("cache_creation_input_tokens"),
        attempts=attempts,
        latency_s=latency_s,
        request_id=request_id,
        images=images,
        warnings=warnings,
        cost_usd=usage_cost(profile, usage, batch=mode == "batch"),
        cache_saved_usd=cache_saving(profile, usage, batch=mode == "batch"),
        fields=fields,
        mode=mode,
    )
    if output is None:
        return result
    return _structured(result, output, max_tokens)


def _structured(result: Result, output: StructuredOutput, max_tokens: int | None) -> Result:
    """An answered row as structured output makes it: ok with ``data``, or a typed, paid error."""
    stop = result.stop_reason
    if stop == facts.STOP_REFUSAL:
        return _paid_error(result, REFUSAL, "the model declined to answer (stop_reason refusal)")
    if stop == facts.STOP_MAX_TOKENS:
        limit = max_tokens if max_tokens is not None else result.output_tokens
        return _paid_error(
            result,
            MAX_TOKENS,
            f"the JSON was cut off at max_tokens = {limit}: the answer needed more than {limit} "
            "output tokens (raise request.max_tokens)",
        )
    if output.mode == "tool":
        if result.tool_input is None:
            return _paid_error(
                result, SCHEMA_MISMATCH, f"no {facts.STRUCTURED_TOOL} tool_use block in the answer"
            )
        json_text = result.tool_input
    else:
        json_text = result.text or ""
    checked = output.spec.check(json_text)
    if checked.data is None:
        return _paid_error(result, SCHEMA_MISMATCH, checked.problem or "the answer does not fit the schema")
    result.text = json_text
    result.data = checked.data
    return result


def _paid_error(result: Result, error_type: str, message: str) -> Result:
    """A final error row that still carries the answer's text, usage and cost (it was paid)."""
    result.status = "error"
    result.error_type = error_type
    result.error_message = message
    result.data = None
    return result


def combined(earlier: Result, later: Result, *, attempts: bool = True) -> Result:
    """``later`` (a re-ask's row) carrying every paid answer of the row: attempts, tokens, cost and
    latency of ``earlier`` added to its own (``attempts=False``: its own attempts, for the state's
    ``record``, which adds a row's earlier attempts itself)."""

    def plus(a: int | None, b: int | None) -> int | None:
        return None if a is None and b is None else (a or 0) + (b or 0)

    latency = (
        None
        if earlier.latency_s is None and later.latency_s is None
        else round((earlier.latency_s or 0.0) + (later.latency_s or 0.0), 4)
    )
    return replace(
        later,
        attempts=earlier.attempts + later.attempts if attempts else later.attempts,
        input_tokens=plus(earlier.input_tokens, later.input_tokens),
        output_tokens=plus(earlier.output_tokens, later.output_tokens),
        cache_read_input_tokens=plus(earlier.cache_read_input_tokens, later.cache_read_input_tokens),
        cache_creation_input_tokens=plus(
            earlier.cache_creation_input_tokens, later.cache_creation_input_tokens
        ),
        cost_usd=(earlier.cost_usd or 0.0) + (later.cost_usd or 0.0),
        cache_saved_usd=(earlier.cache_saved_usd or 0.0) + (later.cache_saved_usd or 0.0),
        latency_s=latency,
    )


def refused(
    profile: ModelProfile,
    *,
    row_id: str,
    error_type: str | None,
    message: str | None,
    images: list[ImageSent],
    warnings: list[str],
    fields: dict[str, Any],
    attempts: int,
    request_id: str | None,
    latency_s: float | None = None,
    mode: Literal["online", "batch"] = "online",
) -> Result:
    """A final ``error`` row: the API refused the request (a 4xx other than a retryable one)."""
    return Result(
        id=row_id,
        status="error",
        model=profile.id,
        attempts=attempts,
        latency_s=latency_s,
        request_id=request_id,
        error_type=error_type,
        error_message=message,
        images=images,
        warnings=warnings,
        fields=fields,
        mode=mode,
    )
