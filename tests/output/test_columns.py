"""The column types a schema implies (batcher.output.columns) and their Arrow types (arrow.py)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from batcher.output.arrow import arrow_field
from batcher.output.columns import MAX_RECURSION, plan_columns
from tests.output.samples import ALL_OF, NESTED, NULLABLE_TYPES, PYDANTIC, RECURSIVE, ROOT_REF, TAGS, UNIONS


def arrow_schema(schema: dict[str, Any], columns: Any = "flatten") -> pa.Schema:
    return pa.schema([arrow_field(f) for f in plan_columns(schema, columns)])


def not_null(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def test_tags_flattened() -> None:
    assert arrow_schema(TAGS) == pa.schema(
        [
            ("caption", pa.string()),
            ("tags", pa.list_(pa.string())),
            (
                "counts",
                pa.struct(
                    [
                        not_null("people", pa.int64()),
                        not_null("animals", pa.int64()),
                        not_null("vehicles", pa.int64()),
                    ]
                ),
            ),
            ("has_text", pa.bool_()),
            ("is_photo", pa.bool_()),
            ("dominant_colour", pa.struct([not_null("name", pa.string()), not_null("hex", pa.string())])),
            ("setting", pa.string()),
            ("text_content", pa.string()),
        ]
    )


def test_top_level_columns_are_nullable_even_when_required() -> None:
    # error rows have no data
    assert all(f.nullable for f in arrow_schema(TAGS))


def test_struct_mode_is_one_column_data() -> None:
    schema = arrow_schema(TAGS, "struct")
    assert schema.names == ["data"]
    data = schema.field("data")
    assert data.nullable
    assert data.type.field("caption") == not_null("caption", pa.string())
    assert data.type.field("text_content") == pa.field("text_content", pa.string())  # optional: nullable
    assert data.type.field("counts").type.field("people") == not_null("people", pa.int64())


def test_pydantic_model_refs_optionals_and_enums() -> None:
    box = pa.struct([not_null("x", pa.int64()), not_null("y", pa.int64()), pa.field("label", pa.string())])
    assert arrow_schema(PYDANTIC) == pa.schema(
        [
            ("caption", pa.string()),
            ("boxes", pa.list_(box)),
            ("colour", pa.string()),
            ("mood", pa.string()),
            ("confidence", pa.float64()),
            ("rating", pa.int64()),
            ("extra", pa.string()),  # an object without properties: JSON text
            ("best", box),
        ]
    )


def test_unions_enums_and_consts() -> None:
    assert arrow_schema(UNIONS) == pa.schema(
        [
            ("either", pa.string()),  # string or integer: JSON text
            ("num", pa.float64()),  # integer or number: double
            ("opt", pa.string()),
            ("ints", pa.int64()),
            ("mixed", pa.string()),
            ("fixed", pa.string()),
            ("nums", pa.float64()),
            ("flags", pa.bool_()),
        ]
    )
    kinds = {f.name: f.type.kind for f in plan_columns(UNIONS, "flatten")}
    assert kinds["either"] == "json"
    assert kinds["mixed"] == "string"


def test_nested_lists_of_structs_and_json_text_fallbacks() -> None:
    person = pa.struct(
        [
            not_null("name", pa.string()),
            pa.field("age", pa.int64()),
            pa.field("tags", pa.list_(pa.list_(pa.float64()))),
        ]
    )
    assert arrow_schema(NESTED) == pa.schema(
        [
            ("people", pa.list_(person)),
            ("meta", pa.struct([pa.field("source", pa.string())])),
            ("free", pa.string()),
            ("anything", pa.string()),
        ]
    )
    kinds = {f.name: f.type.kind for f in plan_columns(NESTED, "flatten")}
    assert kinds["free"] == kinds["anything"] == "json"


def test_all_of_is_merged() -> None:
    assert arrow_schema(ALL_OF) == pa.schema(
        [("item", pa.struct([not_null("id", pa.string()), not_null("n", pa.int64())]))]
    )


def test_type_lists_make_nullable_fields() -> None:
    assert arrow_schema(NULLABLE_TYPES) == pa.schema(
        [
            ("s", pa.string()),
            ("n", pa.float64()),
            ("o", pa.struct([not_null("k", pa.bool_())])),
        ]
    )
    inner = arrow_schema({"type": "object", "properties": {"w": NULLABLE_TYPES}}).field("w").type
    assert [inner.field(n).nullable for n in ("s", "n", "o")] == [True, False, True]


def test_a_root_ref_is_followed() -> None:
    assert arrow_schema(ROOT_REF) == pa.schema([("size", pa.int64())])


def test_a_recursive_ref_becomes_json_text_past_the_recursion_limit() -> None:
    (tree,) = plan_columns(RECURSIVE, "flatten")
    depth = 0
    col = tree.type
    while col.kind == "struct":
        children = next(f for f in col.fields if f.name == "children")
        assert children.type.kind == "list"
        assert children.type.item is not None
        col = children.type.item
        depth += 1
    assert col.kind == "json"
    assert depth == MAX_RECURSION  # Node inside Node, expanded that many times
    arrow_schema(RECURSIVE)  # Arrow takes the nesting


@pytest.mark.parametrize(
    ("sub", "expected"),
    [
        ({"type": "string", "format": "date-time"}, pa.string()),
        ({"type": "integer"}, pa.int64()),
        ({"type": "number"}, pa.float64()),
        ({"type": "boolean"}, pa.bool_()),
        ({"type": "array", "items": {"type": "integer"}}, pa.list_(pa.int64())),
        ({"type": "object", "properties": {}}, pa.string()),
        ({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}, pa.string()),
        ({"description": "anything"}, pa.string()),
    ],
)
def test_scalar_rules(sub: dict[str, Any], expected: pa.DataType) -> None:
    assert arrow_schema({"type": "object", "properties": {"v": sub}}).field("v").type == expected


def test_describe_spells_arrow_types() -> None:
    texts = dict((f.name, f.type.describe()) for f in plan_columns(PYDANTIC, "flatten"))
    assert texts["boxes"] == "list<struct<x: int64 not null, y: int64 not null, label: string>>"
    assert texts["extra"] == "string"


def test_refs_that_do_not_recur_are_followed_however_deep() -> None:
    defs = {
        f"L{i}": {"type": "object", "properties": {"next": {"$ref": f"#/$defs/L{i + 1}"}}} for i in range(6)
    }
    defs["L6"] = {"type": "integer"}
    schema = {"type": "object", "$defs": defs, "properties": {"top": {"$ref": "#/$defs/L0"}}}
    col = arrow_schema(schema).field("top").type
    for _ in range(6):
        col = col.field("next").type
    assert col == pa.int64()
