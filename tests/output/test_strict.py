"""batcher.output.strict against the official SDK's transform_schema (the oracle), and where they part."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from anthropic.lib._parse._transform import transform_schema

from batcher.output.strict import META_KEYWORDS, StrictSchemaError, split_type_list, strict_schema
from tests.output.samples import NULLABLE_TYPES, SDK_SAMPLES

#: Small schemas for single rules, beside the whole samples.
SMALL: dict[str, dict[str, Any]] = {
    "min_items_two": {"type": "array", "items": {"type": "string"}, "minItems": 2},
    "min_items_one": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "unsupported_format": {"type": "string", "format": "binary", "description": "Bytes."},
    "supported_format": {"type": "string", "format": "uuid", "maxLength": 36},
    "enum_of_objects": {"type": "object", "enum": [{"a": 1}]},
    "const_number": {"const": 3, "description": "Three."},
    "all_of": {"allOf": [{"type": "integer"}, {"type": "integer", "maximum": 3}]},
    "required_kept": {"type": "object", "properties": {"a": {"type": "null"}}, "required": ["a"]},
    "pattern_properties": {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
    "commented": {"type": "object", "$comment": "c", "properties": {"a": {"$id": "a", "type": "string"}}},
}


@pytest.mark.parametrize("name", [*SDK_SAMPLES, *SMALL])
def test_matches_the_sdk_transform(name: str) -> None:
    schema = SDK_SAMPLES.get(name) or SMALL[name]
    before = copy.deepcopy(schema)
    assert strict_schema(schema) == transform_schema(_without_meta(schema))
    assert schema == before, "the user's schema is not modified"


def _without_meta(node: Any) -> Any:
    """``$schema``/``$id``/``$comment`` taken out: batcher leaves them out, the SDK would describe them."""
    if isinstance(node, dict):
        return {k: _without_meta(v) for k, v in node.items() if k not in META_KEYWORDS}
    if isinstance(node, list):
        return [_without_meta(v) for v in node]
    return node


def test_document_keywords_are_not_sent() -> None:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "x", "type": "object"}
    assert strict_schema(schema) == {"type": "object", "properties": {}, "additionalProperties": False}
    assert "$schema" in transform_schema(copy.deepcopy(schema))["description"]  # the SDK's way


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


@pytest.mark.parametrize("name", SDK_SAMPLES)
def test_every_object_refuses_additional_properties(name: str) -> None:
    objects = list(_objects(strict_schema(SDK_SAMPLES[name])))
    assert objects
    assert all(o["additionalProperties"] is False for o in objects)


def test_unenforceable_constraints_move_into_the_description() -> None:
    out = strict_schema({"type": "integer", "minimum": 1, "maximum": 10, "description": "A number"})
    assert out == {"type": "integer", "description": "A number\n\n{minimum: 1, maximum: 10}"}


def test_one_of_becomes_any_of_and_refs_stay() -> None:
    out = strict_schema(
        {"oneOf": [{"$ref": "#/$defs/A"}, {"type": "null"}], "$defs": {"A": {"type": "string"}}}
    )
    assert out == {"$defs": {"A": {"type": "string"}}, "anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ({"type": "object", "properties": {"x": {}}}, "properties.x"),
        ({"type": "object", "properties": {"x": {"description": "no type"}}}, "properties.x"),
        (
            {"type": "array", "items": {"type": "object", "properties": {"y": {"minimum": 1}}}},
            "items.properties.y",
        ),
        ({"type": "object", "$defs": {"D": {"title": "D"}}}, "$defs.D"),
        ({"anyOf": [{"type": "string"}, {"maxLength": 2}]}, "anyOf.1"),
        ({"type": "array", "items": [{"type": "string"}]}, "items"),
        ({"type": "object", "properties": {"x": {"type": "text"}}}, "properties.x.type"),
    ],
)
def test_a_node_the_api_cannot_take_is_refused_naming_its_path(schema: dict[str, Any], path: str) -> None:
    with pytest.raises(StrictSchemaError) as caught:
        strict_schema(schema)
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: ")


def test_the_sdk_refuses_those_nodes_too() -> None:
    # The refusal above is not stricter than the SDK: it raises on an untyped node as well.
    with pytest.raises(ValueError):
        transform_schema({"type": "object", "properties": {"x": {}}})


def test_a_list_type_becomes_any_of_with_each_types_keywords() -> None:
    assert split_type_list({"type": ["string", "null"], "maxLength": 3, "description": "D"}) == {
        "description": "D",
        "anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}],
    }
    assert split_type_list({"type": ["integer"], "minimum": 0}) == {"type": "integer", "minimum": 0}
    out = strict_schema(NULLABLE_TYPES)
    assert out["properties"]["s"] == {
        "description": "S.",
        "anyOf": [{"type": "string", "description": "{maxLength: 10}"}, {"type": "null"}],
    }
    assert out["properties"]["o"]["anyOf"][0]["additionalProperties"] is False
    # what the split produces, the SDK takes as it is
    split = {"type": "object", "properties": {"s": split_type_list(NULLABLE_TYPES["properties"]["s"])}}
    assert strict_schema(split) == transform_schema(copy.deepcopy(split))
