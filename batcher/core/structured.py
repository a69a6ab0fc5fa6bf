"""Structured output in the run core: which wire shape a job's schema goes in (a pure decision),
and the job's loaded ``[output]`` with that shape, as the planner and the answer need it.

``output_config.format`` where the model supports structured outputs (the Models API's
``capabilities.structured_outputs.supported``; without a Models API, the profile's ``capabilities``
from configs/models.toml); else forced tool use (one tool whose ``input_schema`` is the schema)
where the profile says the model takes it; else the job is refused before anything is sent.
``batcher run`` and ``batcher estimate`` decide through the same :func:`structured_mode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batcher.api.bodies import StructuredMode, StructuredRequest
from batcher.config import ConfigError
from batcher.errors import MAX_TOKENS, REFUSAL, SCHEMA_MISMATCH
from batcher.models import ModelProfile

if TYPE_CHECKING:
    from batcher.core.outcomes import Counters
    from batcher.output import OutputSpec

#: The row error types of structured output, in the order the summary names them.
OUTPUT_ERROR_TYPES = (REFUSAL, MAX_TOKENS, SCHEMA_MISMATCH)


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A job's ``[output]``, loaded, and the mode its requests ask for it in."""

    spec: OutputSpec
    mode: StructuredMode

    @property
    def request(self) -> StructuredRequest:
        """What the request body carries (:func:`batcher.api.bodies.structured_params`)."""
        return StructuredRequest(self.mode, self.spec.wire_schema)

    @property
    def retry_invalid(self) -> int:
        return self.spec.retry_invalid


def supports_structured_outputs(info: Mapping[str, Any], profile: ModelProfile) -> bool:
    """The Models API's word (``info``: its answer for the model, ``{}`` where the endpoint has
    none), else the profile's ``capabilities``."""
    caps = info.get("capabilities")
    if isinstance(caps, Mapping) and "structured_outputs" in caps:
        value = caps["structured_outputs"]
        if isinstance(value, Mapping):
            return value.get("supported") is True
        return value is True
    return profile.can("structured_outputs")


def structured_mode(job_path: Path | str, profile: ModelProfile, supported: bool) -> StructuredMode:
    """``"format"`` where the model supports structured outputs, ``"tool"`` where it takes forced
    tool use instead; a :class:`ConfigError` (exit 2) naming the model where it takes neither."""
    if supported:
        return "format"
    if profile.forced_tool_use:
        return "tool"
    raise ConfigError(
        f"{job_path}: request.model: {profile.id} supports neither structured outputs nor forced "
        "tool use; output.schema cannot be enforced"
    )


def tool_fallback_line(profile: ModelProfile) -> str:
    """The one notice a run (or an estimate) gives when the schema goes as a forced tool."""
    return (
        f"batcher: {profile.id} does not support structured outputs (output_config.format); "
        "output.schema is sent as a forced tool's input schema instead"
    )


def decide(
    spec: OutputSpec | None, job_path: Path | str, profile: ModelProfile, info: Mapping[str, Any]
) -> StructuredOutput | None:
    """The job's structured output with its mode (None without ``[output]``)."""
    if spec is None:
        return None
    mode = structured_mode(job_path, profile, supports_structured_outputs(info, profile))
    return StructuredOutput(spec, mode)


def output_line(counters: Counters) -> str:
    """The run's structured-output summary: its typed errors by name, and the re-asks it made."""
    counts = ", ".join(f"{name} {counters.errors_by_type.get(name, 0):,}" for name in OUTPUT_ERROR_TYPES)
    return f"batcher: structured output: {counts}; re-asks {counters.reasks:,}"
