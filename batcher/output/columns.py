"""The column types a schema implies: a pure decision, no pyarrow (:mod:`batcher.output.arrow` maps it).

Rules (README "Structured output"):

* ``string`` (any format) → string; ``integer`` → int64; ``number`` → double; ``boolean`` → bool;
* ``enum``/``const``: of strings → string, of integers → int64, of numbers → double, of booleans →
  bool, of mixed types → string (non-strings written as JSON text);
* an object with properties → struct (one field per property); an array with ``items`` →
  list<item type> (arrays of objects: list<struct>);
* ``["T", "null"]``, ``anyOf [T, null]`` and a property not in ``required`` → T, nullable; ``integer``
  and ``number`` together → double;
* a local ``$ref`` is followed (a recursive one, expanded :data:`MAX_RECURSION` times, then becomes
  JSON text);
  ``allOf`` of objects is merged;
* everything else has no single Arrow type: ``anyOf``/``oneOf`` of different types, an object
  without properties, an array without ``items``, a schema without a type: a **JSON-text** column
  (kind ``json``), a string holding the value as compact JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: How many times a recursive $ref is expanded inside itself before it becomes JSON text.
MAX_RECURSION = 3

#: The $refs being expanded, outermost first.
Chain = tuple[str, ...]

Kind = Literal["string", "int64", "double", "bool", "json", "list", "struct"]


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: ColumnType
    nullable: bool


@dataclass(frozen=True, slots=True)
class ColumnType:
    """One column's type: a scalar kind, ``json`` (JSON text in a string), a list or a struct."""

    kind: Kind
    #: list: the item type
    item: ColumnType | None = None
    #: struct: its fields, in the schema's order
    fields: tuple[Field, ...] = ()

    def describe(self) -> str:
        """Arrow's spelling, for messages and the state meta: ``list<struct<a: int64>>``."""
        if self.kind == "list":
            assert self.item is not None
            return f"list<{self.item.describe()}>"
        if self.kind == "struct":
            inner = ", ".join(
                f"{f.name}: {f.type.describe()}{'' if f.nullable else ' not null'}" for f in self.fields
            )
            return f"struct<{inner}>"
        return "string" if self.kind == "json" else self.kind


STRING = ColumnType("string")
INT64 = ColumnType("int64")
DOUBLE = ColumnType("double")
BOOL = ColumnType("bool")
JSON_TEXT = ColumnType("json")

_SCALARS = {"string": STRING, "integer": INT64, "number": DOUBLE, "boolean": BOOL, "null": STRING}


def resolve_ref(root: dict[str, Any], ref: str) -> dict[str, Any] | None:
    """The schema a local ``$ref`` ("#/$defs/X", "#") points to inside ``root``, or None."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    pointer = ref[1:]
    if pointer and not pointer.startswith("/"):
        return None
    for raw in pointer.split("/")[1:] if pointer else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node if isinstance(node, dict) else None


def _literal_type(values: list[Any]) -> tuple[ColumnType, bool]:
    nullable = any(v is None for v in values)
    present = [v for v in values if v is not None]
    if not present:
        return STRING, True
    if all(isinstance(v, str) for v in present):
        return STRING, nullable
    if all(isinstance(v, bool) for v in present):
        return BOOL, nullable
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return INT64, nullable
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return DOUBLE, nullable
    return STRING, nullable


class _Planner:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def deref(self, node: dict[str, Any], chain: Chain) -> tuple[dict[str, Any] | None, Chain]:
        """Follow $refs, adding each to ``chain`` (the refs being expanded); None for a ref expanded
        :data:`MAX_RECURSION` times already inside itself, or one that does not resolve."""
        while "$ref" in node:
            ref = str(node["$ref"])
            if chain.count(ref) >= MAX_RECURSION:
                return None, chain
            target = resolve_ref(self.root, ref)
            if target is None:
                return None, chain
            node, chain = target, (*chain, ref)
        return node, chain

    def merge_all_of(self, node: dict[str, Any], chain: Chain) -> dict[str, Any] | None:
        """``allOf`` folded into one schema (objects: properties and required joined); None if not."""
        merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
        for sub in node["allOf"]:
            if not isinstance(sub, dict):
                return None
            part, _ = self.deref(sub, chain)
            if part is None:
                return None
            if "allOf" in part:
                part = self.merge_all_of(part, chain)
                if part is None:
                    return None
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *value]
                elif key in merged and merged[key] != value and key not in ("description", "title"):
                    return None  # conflicting types or keywords: no single column type
                else:
                    merged.setdefault(key, value)
        return merged

    def plan(self, schema: Any, chain: Chain = ()) -> tuple[ColumnType, bool]:
        """The column type ``schema`` implies, and whether null is a value it allows."""
        if not isinstance(schema, dict):
            return JSON_TEXT, True
        node, chain = self.deref(schema, chain)
        if node is None:
            return JSON_TEXT, True
        if "allOf" in node:
            merged = self.merge_all_of(node, chain)
            if merged is None:
                return JSON_TEXT, True
            node = merged
        if "const" in node:
            return _literal_type([node["const"]])
        if isinstance(node.get("enum"), list) and node["enum"]:
            return _literal_type(node["enum"])
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                return self.plan_union(node[key], chain)
        type_ = node.get("type")
        if isinstance(type_, list):
            return self.plan_union([{**node, "type": t} for t in type_], chain)
        if type_ in _SCALARS:
            return _SCALARS[type_], type_ == "null"
        if type_ == "array":
            items = node.get("items")
            if not isinstance(items, dict):
                return JSON_TEXT, False
            item, _ = self.plan(items, chain)
            return ColumnType("list", item=item), False
        if type_ == "object":
            props = node.get("properties")
            if not isinstance(props, dict) or not props:
                return JSON_TEXT, False
            required = set(node.get("required") or [])
            fields = []
            for name, sub in props.items():
                col, nullable = self.plan(sub, chain)
                fields.append(Field(name, col, nullable or name not in required))
            return ColumnType("struct", fields=tuple(fields)), False
        return JSON_TEXT, True

    def plan_union(self, variants: list[Any], chain: Chain) -> tuple[ColumnType, bool]:
        nullable = False
        types: list[ColumnType] = []
        for variant in variants:
            col, null_ok = self.plan(variant, chain)
            if isinstance(variant, dict) and variant.get("type") == "null":
                nullable = True
                continue
            nullable = nullable or null_ok
            if col not in types:
                types.append(col)
        if not types:
            return STRING, True
        if len(types) == 1:
            return types[0], nullable
        if set(types) == {INT64, DOUBLE}:
            return DOUBLE, nullable
        return JSON_TEXT, nullable


def root_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The root after its $refs (and allOf), or None where that cannot be followed."""
    planner = _Planner(schema)
    node, chain = planner.deref(schema, ())
    if node is not None and "allOf" in node:
        node = planner.merge_all_of(node, chain)
    return node


def plan_columns(schema: dict[str, Any], columns: Literal["flatten", "struct"]) -> tuple[Field, ...]:
    """The result columns a schema adds: one per top-level property, or one struct column ``data``.

    Top-level columns are always nullable: error rows have no data. Nested fields follow the schema.
    """
    planner = _Planner(schema)
    if columns == "struct":
        col, _ = planner.plan(schema)
        return (Field("data", col, True),)
    root = root_schema(schema) or {}
    props = root.get("properties") or {}
    return tuple(Field(name, planner.plan(sub)[0], True) for name, sub in props.items())
