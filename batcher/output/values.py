"""A valid answer's values as exactly the column types (:mod:`batcher.output.columns`), for pyarrow.

Integers as ``int`` (JSON Schema counts 2.0 as an integer), numbers as ``float``, JSON-text columns
as compact JSON, lists and structs converted item by item, a missing optional property None.

A value that cannot be its column's type (a wrong type, which validation rules out, or a number
outside int64 or double) is None in :func:`row_values`; :func:`unfit` finds such a value first, so
that :meth:`batcher.output.OutputSpec.check` refuses the answer rather than the Parquet writer a
null in a field the schema says is never null.
"""

from __future__ import annotations

import json
from typing import Any

from batcher.errors import BatcherError
from batcher.output.columns import ColumnType, Field

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class Unfit(BatcherError, ValueError):
    """A value its column cannot hold, named by its JSON path ("counts.people"); raised by a strict
    :func:`convert`, caught by :func:`unfit`."""

    def __init__(self, path: tuple[str, ...], value: Any, col: ColumnType) -> None:
        shown = json_text(value) if not isinstance(value, float) else repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        where = ".".join(path) or "top level"
        super().__init__(f"{where}: {shown} does not fit the column type {col.describe()}")


def json_text(value: Any) -> str:
    """Compact JSON, as a JSON-text column holds it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)


def _scalar(value: Any, kind: str) -> Any:
    if kind == "json":
        return json_text(value)
    if kind == "string":
        return value if isinstance(value, str) else json_text(value)
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if kind == "int64":
        if isinstance(value, float):
            if not value.is_integer():
                return None
            value = int(value)
        return value if _INT64_MIN <= value <= _INT64_MAX else None
    if kind == "double":
        try:
            return float(value)
        except OverflowError:  # an int beyond a double's range
            return None
    raise ValueError(f"unknown column kind {kind!r}")


def convert(value: Any, col: ColumnType, path: tuple[str, ...] = (), strict: bool = False) -> Any:
    """``value`` as a Python value pyarrow takes for ``col``'s Arrow type; None where it cannot be
    (``strict``: raise :class:`Unfit` naming its path instead)."""
    if value is None:
        return None
    if col.kind == "list":
        assert col.item is not None
        if isinstance(value, list):
            return [convert(v, col.item, (*path, str(i)), strict) for i, v in enumerate(value)]
        out = None
    elif col.kind == "struct":
        if isinstance(value, dict):
            return struct_values(value, col.fields, path, strict)
        out = None
    else:
        out = _scalar(value, col.kind)
    if out is None and strict:
        raise Unfit(path, value, col)
    return out


def struct_values(
    data: dict[str, Any], fields: tuple[Field, ...], path: tuple[str, ...] = (), strict: bool = False
) -> dict[str, Any]:
    return {f.name: convert(data.get(f.name), f.type, (*path, f.name), strict) for f in fields}


def row_values(data: dict[str, Any] | None, columns: tuple[Field, ...], struct: bool) -> dict[str, Any]:
    """Column name → value for one row; every column None when ``data`` is None (an error row)."""
    if data is None:
        return {f.name: None for f in columns}
    if struct:
        (only,) = columns
        return {only.name: convert(data, only.type)}
    return struct_values(data, columns)


def unfit(data: dict[str, Any], columns: tuple[Field, ...], struct: bool) -> str | None:
    """The first value of ``data`` its column cannot hold, as a one-line problem; None if all fit."""
    try:
        if struct:
            (only,) = columns
            convert(data, only.type, (), strict=True)
        else:
            struct_values(data, columns, (), strict=True)
    except Unfit as exc:
        return str(exc)
    return None
