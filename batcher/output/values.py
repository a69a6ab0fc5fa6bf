"""A valid answer's values as exactly the column types (:mod:`batcher.output.columns`), for pyarrow.

Integers as ``int`` (JSON Schema counts 2.0 as an integer), numbers as ``float``, JSON-text columns
as compact JSON, lists and structs converted item by item, a missing optional property None. A value
that cannot be the column's type (only an answer that did not validate could hold one) is None.
"""

from __future__ import annotations

import json
from typing import Any

from batcher.output.columns import ColumnType, Field

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def json_text(value: Any) -> str:
    """Compact JSON, as a JSON-text column holds it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def convert(value: Any, col: ColumnType) -> Any:
    """``value`` as a Python value pyarrow takes for ``col``'s Arrow type."""
    if value is None:
        return None
    kind = col.kind
    if kind == "json":
        return json_text(value)
    if kind == "string":
        return value if isinstance(value, str) else json_text(value)
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind == "int64":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX else None
    if kind == "double":
        return float(value) if isinstance(value, int | float) else None
    if kind == "list":
        assert col.item is not None
        return [convert(v, col.item) for v in value] if isinstance(value, list) else None
    if kind == "struct":
        return struct_values(value, col.fields) if isinstance(value, dict) else None
    raise ValueError(f"unknown column kind {kind!r}")


def struct_values(data: dict[str, Any], fields: tuple[Field, ...]) -> dict[str, Any]:
    return {f.name: convert(data.get(f.name), f.type) for f in fields}


def row_values(data: dict[str, Any] | None, columns: tuple[Field, ...], struct: bool) -> dict[str, Any]:
    """Column name → value for one row; every column None when ``data`` is None (an error row)."""
    if data is None:
        return {f.name: None for f in columns}
    if struct:
        (only,) = columns
        return {only.name: convert(data, only.type)}
    return struct_values(data, columns)
