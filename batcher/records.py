"""The small records the pipeline stages hand each other: a manifest row in, a result out.

Plain slotted dataclasses (no validation layer: they are built by batcher's own code). A
:class:`Result` round-trips through JSON (:meth:`Result.to_json` / :meth:`Result.from_json`), which is
how the job state stores it the moment it arrives; the Parquet sink reads it back from there. That
JSON is strict (non-finite numbers become null), so SQLite's JSON functions can always read it.

Ids: a row's ``id`` is the user's (or a derived one) and is what the results show. The Message
Batches API only accepts ``custom_id`` values matching :data:`batcher.facts.CUSTOM_ID_PATTERN`, so
:func:`custom_id_for` maps any id to one that does, deterministically.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from batcher.errors import RowFailure
from batcher.facts import CUSTOM_ID_PATTERN

#: Prefix of a custom_id made by hashing an id the API would not accept as it is.
HASHED_CUSTOM_ID_PREFIX = "h-"


def custom_id_for(row_id: str) -> str:
    """The Message Batches ``custom_id`` for ``row_id``: itself when the API accepts it, else a hash.

    The hash form is ``h-`` + 48 hex digits (50 characters, within the 64 allowed); the job state keeps
    the mapping both ways, so results always show the user's own id.
    """
    if CUSTOM_ID_PATTERN.match(row_id):
        return row_id
    return HASHED_CUSTOM_ID_PREFIX + hashlib.sha256(row_id.encode("utf-8")).hexdigest()[:48]


def finite(value: Any) -> Any:
    """``value`` with every NaN and +-inf float in it (through dicts, lists, tuples) made None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


@dataclass(slots=True)
class Row:
    """One manifest row, ready for preprocessing.

    ``images`` are paths resolved against the manifest's folder, or http(s) URLs as given.
    ``fields`` are the manifest's own columns for this row (JSON-able scalars). A row that is already
    bad when read (no image, a template field missing, ...) carries ``error`` (the one row-failure
    record, :class:`batcher.errors.RowFailure`) and is never sent.
    """

    id: str
    images: list[str]
    prompt: str
    fields: dict[str, Any]
    index: int
    error: RowFailure | None = None

    @property
    def custom_id(self) -> str:
        return custom_id_for(self.id)


@dataclass(slots=True)
class ImageSent:
    """What was sent for one image of a row (or would have been, for a row that failed early)."""

    source: str
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    media_type: str | None = None
    transport: Literal["base64", "file", "url"] | None = None
    tokens: int | None = None
    file_id: str | None = None


@dataclass(slots=True)
class Result:
    """The outcome for one row: exactly one of these per id ends up in the Parquet results."""

    id: str
    status: Literal["ok", "error"]
    text: str | None = None
    model: str | None = None
    stop_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    attempts: int = 0
    latency_s: float | None = None
    request_id: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    images: list[ImageSent] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cost_usd: float | None = None
    #: what the prompt cache saved on this row's answers (cost with cached tokens as plain input,
    #: less the cost; negative for a write): :func:`batcher.cost.cache_saving`
    cache_saved_usd: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    #: Unix time (seconds) when the row finished.
    finished_at: float = field(default_factory=time.time)
    mode: Literal["online", "batch"] = "online"
    tool_input: str | None = None
    #: the parsed answer that fitted the job's [output] schema; None on error rows and without [output]
    data: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """Strict JSON: a NaN or +-inf anywhere (a manifest's float cell) is written as null, never as
        Python's ``NaN``, which SQLite's JSON functions (the state's summary) refuse."""
        data = self.to_dict()
        try:
            return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str, allow_nan=False)
        except ValueError:
            return json.dumps(finite(data), ensure_ascii=False, separators=(",", ":"), default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """Inverse of :meth:`to_dict`; unknown keys (from a newer batcher) are ignored."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["images"] = [ImageSent(**img) for img in kwargs.get("images") or []]
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> Result:
        return cls.from_dict(json.loads(text))
