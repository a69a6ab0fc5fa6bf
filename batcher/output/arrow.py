"""Column types (:mod:`batcher.output.columns`) as Arrow types; pyarrow is imported here, lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from batcher.output.columns import ColumnType, Field

if TYPE_CHECKING:
    import pyarrow as pa


def arrow_type(col: ColumnType) -> pa.DataType:
    import pyarrow as pa

    if col.kind in ("string", "json"):
        return pa.string()
    if col.kind == "int64":
        return pa.int64()
    if col.kind == "double":
        return pa.float64()
    if col.kind == "bool":
        return pa.bool_()
    if col.kind == "list":
        assert col.item is not None
        return pa.list_(arrow_type(col.item))
    if col.kind == "struct":
        return pa.struct([arrow_field(f) for f in col.fields])
    raise ValueError(f"unknown column kind {col.kind!r}")


def arrow_field(field: Field) -> pa.Field:
    import pyarrow as pa

    return pa.field(field.name, arrow_type(field.type), nullable=field.nullable)
