""":class:`OutputSpec`: a job's [output], loaded: the schema, as sent, and how answers become columns."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import batcher.output.columns as _columns
import batcher.output.values as _values

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True, slots=True)
class Checked:
    """One answer checked: the parsed, valid data, or the one-line problem naming the JSON path."""

    data: dict[str, Any] | None
    problem: str | None


def fingerprint_of(wire_schema: dict[str, Any], columns: str) -> str:
    """sha256 of the canonical wire schema and the columns mode: the same for the same parts' schema."""
    canonical = json.dumps([wire_schema, columns], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _path_text(path: Any) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "top level"


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """A job's structured output. Built by :func:`batcher.output.load_output`."""

    #: the user's schema, $refs intact: answers are validated against it
    schema: dict[str, Any]
    #: as sent: the SDK-style strict transform (batcher.output.strict)
    wire_schema: dict[str, Any]
    columns: Literal["flatten", "struct"]
    #: re-asks a row gets after an answer that fails validation
    retry_invalid: int
    #: how the job named it, for messages: "schemas/tags.json", "inline", "mod:Class"
    source: str
    #: sha256 of (canonical wire_schema JSON, columns)
    fingerprint: str = ""
    # Derived once, on first use (frozen: set through object.__setattr__).
    _fields: tuple[_columns.Field, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _validator: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint_of(self.wire_schema, self.columns))

    # Pickled without its caches (a jsonschema validator does not pickle): a spec crosses process
    # boundaries whole and rebuilds them on first use.
    _STATE = ("schema", "wire_schema", "columns", "retry_invalid", "source", "fingerprint")

    def __getstate__(self) -> list[Any]:
        return [getattr(self, name) for name in self._STATE]

    def __setstate__(self, state: list[Any]) -> None:
        for name, value in zip(self._STATE, state, strict=True):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_fields", None)
        object.__setattr__(self, "_validator", None)

    # -- columns --

    def fields(self) -> tuple[_columns.Field, ...]:
        """The columns it adds, as pure column types (batcher.output.columns)."""
        if self._fields is None:
            object.__setattr__(self, "_fields", _columns.plan_columns(self.schema, self.columns))
        assert self._fields is not None
        return self._fields

    def column_names(self) -> list[str]:
        """The result columns it adds, in order."""
        return [f.name for f in self.fields()]

    def column_types(self) -> list[tuple[str, str]]:
        """(name, Arrow type as text) per column: what the state keeps to hold later runs to it."""
        return [(f.name, f.type.describe()) for f in self.fields()]

    def arrow_fields(self) -> list[pa.Field]:
        """The columns as Arrow fields (imports pyarrow). Top-level columns are always nullable:
        error rows have no data. Nested struct fields are nullable as the schema implies."""
        from batcher.output.arrow import arrow_field

        return [arrow_field(f) for f in self.fields()]

    def row_values(self, data: dict[str, Any] | None) -> dict[str, Any]:
        """Column → value for one row (all None when ``data`` is None), typed as the columns are."""
        return _values.row_values(data, self.fields(), self.columns == "struct")

    # -- answers --

    def validator(self) -> Any:
        """The jsonschema validator for :attr:`schema` (its ``$schema``'s draft; 2020-12 by default),
        with a format checker; built once."""
        if self._validator is None:
            from jsonschema import Draft202012Validator
            from jsonschema.validators import validator_for

            cls = validator_for(self.schema, default=Draft202012Validator)
            object.__setattr__(self, "_validator", cls(self.schema, format_checker=cls.FORMAT_CHECKER))
        return self._validator

    def check(self, text: str) -> Checked:
        """Parse one answer's JSON text and validate it against the user's schema."""
        import orjson
        from jsonschema.exceptions import best_match

        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return Checked(None, f"not JSON: {exc}")
        if not isinstance(data, dict):
            return Checked(None, f"top level: not an object but {_json_kind(data)}")
        error = best_match(self.validator().iter_errors(data))
        if error is not None:
            message = " ".join(error.message.split())
            if len(message) > 300:
                message = message[:297] + "..."
            return Checked(None, f"{_path_text(error.absolute_path)}: {message}")
        # Valid, but a value no column can hold (an integer beyond int64): refused here, not by
        # the Parquet writer.
        problem = _values.unfit(data, self.fields(), self.columns == "struct")
        if problem is not None:
            return Checked(None, problem)
        return Checked(data, None)


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"
