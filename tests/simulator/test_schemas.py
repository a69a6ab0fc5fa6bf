"""The structured-output schema rules the API enforces (``batcher/simulator/schemas.py``), pure."""

from __future__ import annotations

from typing import Any

import pytest

from batcher.simulator.schemas import ADDITIONAL_PROPERTIES, ROOT_NOT_OBJECT, resolve, strict_problem


def closed(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False}


OPEN: dict[str, Any] = {"type": "object", "properties": {"a": {"type": "string"}}}


@pytest.mark.parametrize(
    "schema",
    [
        closed(),
        closed(caption={"type": "string", "minLength": 3}, n={"type": "integer", "minimum": 0}),
        closed(tags={"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 5}),
        closed(box={"$ref": "#/$defs/box"}) | {"$defs": {"box": closed(x={"type": "integer"})}},
        {"$ref": "#/$defs/root", "$defs": {"root": closed(x={"type": "number"})}},  # pydantic RootModel
        closed(either={"anyOf": [{"type": "null"}, closed(x={"type": "string"})]}),
        closed(pair={"type": "array", "prefixItems": [closed(), {"type": "string"}]}),
        {"type": ["object", "null"], "properties": {}, "additionalProperties": False},
        closed(tree={"$ref": "#"}),  # recursion: not refused (not established as refused)
    ],
)
def test_schemas_the_api_takes(schema: dict[str, Any]) -> None:
    assert strict_problem(schema) is None


@pytest.mark.parametrize(
    "schema",
    [
        OPEN,
        {"type": "object", "properties": {}, "additionalProperties": True},
        {"type": "object", "additionalProperties": {"type": "string"}},
        closed(inner=OPEN),
        closed(items={"type": "array", "items": OPEN}),
        closed(pair={"type": "array", "prefixItems": [{"type": "string"}, OPEN]}),
        closed(either={"anyOf": [{"type": "null"}, OPEN]}),
        closed(both={"allOf": [OPEN]}),
        closed(ref={"$ref": "#/$defs/x"}) | {"$defs": {"x": OPEN}},
        closed() | {"$defs": {"unused": OPEN}},  # definitions are checked even when unused
        closed() | {"definitions": {"old": {"properties": {"a": {"type": "string"}}}}},  # no type
    ],
)
def test_every_object_must_close_itself(schema: dict[str, Any]) -> None:
    assert strict_problem(schema) == ADDITIONAL_PROPERTIES
    assert (
        ADDITIONAL_PROPERTIES == "For 'object' type, 'additionalProperties' must be explicitly set to false"
    )


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "string"}},
        {"type": "string"},
        {"anyOf": [closed(), closed()]},
        {"$ref": "#/$defs/s", "$defs": {"s": {"type": "string"}}},
    ],
)
def test_the_root_must_be_an_object(schema: dict[str, Any]) -> None:
    assert strict_problem(schema) == ROOT_NOT_OBJECT


@pytest.mark.parametrize(
    ("schema", "ref"),
    [
        (closed(x={"$ref": "#/$defs/missing"}), "#/$defs/missing"),
        (closed(x={"$ref": "https://example.com/s.json"}), "https://example.com/s.json"),
        (closed(x={"$ref": "other.json#/a"}), "other.json#/a"),
        ({"$ref": "#/$defs/gone"}, "#/$defs/gone"),
    ],
)
def test_a_ref_must_resolve_inside_the_schema(schema: dict[str, Any], ref: str) -> None:
    problem = strict_problem(schema)
    assert problem is not None and problem.startswith(f"$ref '{ref}' does not resolve")


def test_resolve_follows_json_pointers() -> None:
    root = {"$defs": {"a/b": {"x": 1}, "c~d": [{"y": 2}]}}
    assert resolve(root, "#/$defs/a~1b") == {"x": 1}
    assert resolve(root, "#/$defs/c~0d/0") == {"y": 2}
    assert resolve(root, "#") is root
    assert resolve(root, "#/$defs/c~0d/1") is None
    assert resolve(root, "#/nope") is None
