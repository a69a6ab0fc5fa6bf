"""Answers' values as exactly the column types: pyarrow takes every valid answer of every sample."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pyarrow as pa
import pytest

from batcher.output.columns import resolve_ref
from batcher.output.spec import OutputSpec
from batcher.output.strict import strict_schema
from batcher.output.values import convert
from tests.output.samples import SAMPLES, TAGS

_STRINGS = ("", "a", "Zebra crossing", "émoji 🦓", "x" * 50, '{"not": "json"}', "A0")


def _spec(schema: dict[str, Any], columns: Any = "flatten") -> OutputSpec:
    return OutputSpec(schema, strict_schema(schema), columns, 1, "test")


def _value(node: Any, root: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    """A random value meant to fit ``node`` (the checker below keeps only those that do)."""
    if not isinstance(node, dict) or depth > 12:
        return None
    if "$ref" in node:
        return _value(resolve_ref(root, node["$ref"]), root, rng, depth + 1)
    if "const" in node:
        return node["const"]
    if node.get("enum"):
        return rng.choice(node["enum"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            return _value(rng.choice(node[key]), root, rng, depth + 1)
    if "allOf" in node:
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in node["allOf"]:
            part = resolve_ref(root, part["$ref"]) if "$ref" in part else part
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        return _value(merged, root, rng, depth + 1)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = rng.choice(kind)
    if kind == "object":
        out = {}
        required = set(node.get("required", []))
        for name, sub in node.get("properties", {}).items():
            if name in required or rng.random() < 0.5:
                out[name] = _value(sub, root, rng, depth + 1)
        if not node.get("properties"):
            out = rng.choice([{}, {"k": [1, "two", None]}, {"nested": {"a": 1.5}}])
        return out
    if kind == "array":
        low, high = node.get("minItems", 0), node.get("maxItems", 3)
        count = rng.randint(low, max(low, min(high, 3 if depth < 6 else low)))
        items = node.get("items")
        if items is None:
            return [rng.choice([1, "x", None, {"a": []}]) for _ in range(count)]
        out_list = [_value(items, root, rng, depth + 1) for _ in range(count)]
        if node.get("uniqueItems"):
            out_list = [json.loads(t) for t in dict.fromkeys(json.dumps(v) for v in out_list)]
        return out_list
    if kind == "string":
        if node.get("format") == "date-time":
            return "2026-12-04T05:11:00Z"
        text = rng.choice(_STRINGS)
        return text[: node.get("maxLength", 1000)] or "A" * node.get("minLength", 0)
    if kind == "integer":
        low = node.get("minimum", node.get("exclusiveMinimum", -5) + 1)
        value = rng.randint(low, node.get("maximum", low + 10))
        if node.get("multipleOf"):
            value = value * node["multipleOf"]
        return value if rng.random() < 0.8 else float(value)  # 3.0 is an integer too
    if kind == "number":
        low, high = node.get("minimum", -1e6), node.get("maximum", 1e6)
        return rng.choice([low, high, rng.uniform(low, high), int(low)])
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return rng.choice([1, "free", [1, 2], {"a": None}, None, 2.5])


def _valid_answers(schema: dict[str, Any], spec: OutputSpec, n: int) -> list[dict[str, Any]]:
    rng = random.Random(15)
    answers = []
    for _ in range(n):
        checked = spec.check(orjson.dumps(_value(schema, schema, rng)).decode())
        if checked.data is not None:
            answers.append(checked.data)
    return answers


@pytest.mark.parametrize("columns", ["flatten", "struct"])
@pytest.mark.parametrize("name", SAMPLES)
def test_pyarrow_takes_every_valid_answer_as_the_column_types(name: str, columns: Any) -> None:
    schema = SAMPLES[name]
    spec = _spec(schema, columns)
    answers = _valid_answers(schema, spec, 150)
    assert len(answers) >= 50, "the generator must make mostly valid answers, or this tests nothing"
    rows = [spec.row_values(a) for a in answers] + [spec.row_values(None)]
    table = pa.Table.from_pylist(rows, schema=pa.schema(spec.arrow_fields()))
    assert table.num_rows == len(rows)
    assert table.to_pylist() == rows  # nothing coerced on the way: the values were the types
    assert table.to_pylist()[-1] == dict.fromkeys(spec.column_names())


def test_values_are_exactly_typed() -> None:
    spec = _spec(
        {
            "type": "object",
            "properties": {
                "i": {"type": "integer"},
                "d": {"type": "number"},
                "j": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "free": {"type": "object"},
                "o": {"type": "object", "properties": {"p": {"type": "integer"}}},
                "mixed": {"enum": ["a", 1]},
            },
        }
    )
    values = spec.row_values({"i": 3.0, "d": 2, "j": "x", "free": {"b": [1, "é"]}, "o": {}, "mixed": 1})
    assert values == {"i": 3, "d": 2.0, "j": '"x"', "free": '{"b":[1,"é"]}', "o": {"p": None}, "mixed": "1"}
    assert type(values["i"]) is int
    assert type(values["d"]) is float


def test_error_rows_are_all_null() -> None:
    assert _spec(TAGS).row_values(None) == dict.fromkeys(_spec(TAGS).column_names())
    assert _spec(TAGS, "struct").row_values(None) == {"data": None}


def test_a_value_of_the_wrong_type_is_null_not_a_crash() -> None:
    spec = _spec(TAGS)
    values = spec.row_values({"caption": 3, "tags": "no", "counts": [], "has_text": "yes", "setting": None})
    assert values["caption"] == "3"
    assert values["tags"] is None
    assert values["counts"] is None
    assert values["has_text"] is None
    from batcher.output.columns import INT64

    assert convert(2**64, INT64) is None
    assert convert(True, INT64) is None
