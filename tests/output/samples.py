"""Schemas the tests of batcher.output share: what users write (plain files, pydantic models) and the
corners of the type rules. Each is JSON Schema (draft 2020-12) with an object at the root."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from tests.conftest import REPO

TAGS: dict[str, Any] = json.loads((REPO / "jobs" / "schemas" / "tags.json").read_text())


class Colour(StrEnum):
    red = "red"
    green = "green"


class Box(BaseModel):
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    label: str | None = None


class Detection(BaseModel):
    """What the model found in one image."""

    caption: str = Field(max_length=400, description="One sentence.")
    boxes: list[Box] = Field(max_length=20)
    colour: Colour
    mood: Literal["calm", "busy"]
    confidence: float = Field(ge=0, le=1)
    rating: int | None = None
    extra: dict[str, Any] = {}
    best: Box | None = None


PYDANTIC: dict[str, Any] = Detection.model_json_schema()

#: A user's plain schema: no additionalProperties anywhere, constraints the decoder cannot enforce.
PLAIN: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 80, "pattern": "^[A-Z]"},
        "score": {"type": "number", "minimum": 0, "maximum": 10, "description": "How good."},
        "count": {"type": "integer", "exclusiveMinimum": 0, "multipleOf": 2},
        "when": {"type": "string", "format": "date-time"},
        "blob": {"type": "string", "format": "binary"},
        "labels": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 2,
            "maxItems": 5,
            "uniqueItems": True,
        },
        "maybe": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
        "none_ok": {"type": "array", "items": {"type": "boolean"}, "minItems": 0},
    },
    "required": ["name", "score"],
}

UNIONS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        "num": {"anyOf": [{"type": "integer"}, {"type": "number"}]},
        "opt": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]},
        "ints": {"enum": [1, 2, 3]},
        "mixed": {"enum": ["a", 1, None]},
        "fixed": {"const": "v1"},
        "nums": {"enum": [1, 2.5]},
        "flags": {"enum": [True, False]},
    },
    "required": ["either", "num", "opt", "ints", "mixed", "fixed", "nums", "flags"],
}

NESTED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer", "minimum": 0},
                    "tags": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                },
                "required": ["name"],
            },
        },
        "meta": {"type": "object", "properties": {"source": {"type": "string"}}},
        "free": {"type": "object"},
        "anything": {"type": "array"},
    },
    "required": ["people", "meta", "free", "anything"],
}

ALL_OF: dict[str, Any] = {
    "type": "object",
    "$defs": {
        "Base": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
    },
    "properties": {
        "item": {
            "allOf": [
                {"$ref": "#/$defs/Base"},
                {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
            ]
        },
    },
    "required": ["item"],
}

RECURSIVE: dict[str, Any] = {
    "type": "object",
    "$defs": {
        "Node": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 3},
            },
            "required": ["name", "children"],
        }
    },
    "properties": {"tree": {"$ref": "#/$defs/Node"}},
    "required": ["tree"],
}

ROOT_REF: dict[str, Any] = {
    "$ref": "#/$defs/Thing",
    "$defs": {
        "Thing": {
            "type": "object",
            "description": "A thing.",
            "properties": {"size": {"type": "integer", "maximum": 9}},
            "required": ["size"],
        }
    },
}

DESCRIBED: dict[str, Any] = {
    "type": "object",
    "title": "Described",
    "description": "Top.",
    "properties": {
        "a": {"type": "string", "description": "Alpha.", "title": "A", "maxLength": 5, "default": "x"},
        "b": {"type": "integer", "description": "Beta.", "examples": [1, 2]},
        "c": {"type": "object", "properties": {}, "additionalProperties": True},
    },
    "required": ["a", "b", "c"],
}

NULLABLE_TYPES: dict[str, Any] = {
    "type": "object",
    "properties": {
        "s": {"type": ["string", "null"], "maxLength": 10, "description": "S."},
        "n": {"type": ["integer", "number"]},
        "o": {"type": ["object", "null"], "properties": {"k": {"type": "boolean"}}, "required": ["k"]},
    },
    "required": ["s", "n", "o"],
}

#: Samples whose every node the SDK's transform takes (a list `type` it cannot: see NULLABLE_TYPES).
SDK_SAMPLES: dict[str, dict[str, Any]] = {
    "tags": TAGS,
    "pydantic": PYDANTIC,
    "plain": PLAIN,
    "unions": UNIONS,
    "nested": NESTED,
    "all_of": ALL_OF,
    "recursive": RECURSIVE,
    "root_ref": ROOT_REF,
    "described": DESCRIBED,
}
SAMPLES: dict[str, dict[str, Any]] = {**SDK_SAMPLES, "nullable_types": NULLABLE_TYPES}
