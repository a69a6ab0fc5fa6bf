"""The one way an API message becomes a :class:`~batcher.records.Result`, online or from a batch."""

from __future__ import annotations

from typing import Any, Literal

from batcher.api.bodies import answer_text
from batcher.cost import usage_cost
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
) -> Result:
    """An ``ok`` row from the API's message; its cost from its ``usage`` at the mode's price."""
    usage = message.get("usage") or {}
    text, tool_input = answer_text(message)
    return Result(
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
        fields=fields,
        mode=mode,
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
