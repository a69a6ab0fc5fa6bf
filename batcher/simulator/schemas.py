"""What the API refuses in a structured-output schema (``output_config.format.schema``, and the
``input_schema`` of a ``strict`` tool): pure rules that return the problem, or None.

Established, and refused here:

- every object schema, wherever it sits (``properties``, ``items``, ``prefixItems``,
  ``anyOf``/``oneOf``/``allOf``, ``not``, ``$defs``/``definitions``), must set
  ``additionalProperties`` to ``false``, explicitly: missing, ``true`` or a schema are all refused,
  with the API's own words, :data:`ADDITIONAL_PROPERTIES` (the message names the schema, not the
  object inside it: the API's does not either);
- the root must be an object schema (a root ``$ref`` to a local object definition counts, as
  pydantic's root models send);
- a ``$ref`` must resolve inside the schema (``#/...``): remote references are not fetched.

Not refused (not established as refused; the official SDK moves them into descriptions because the
decoder cannot enforce them, so the API takes or ignores them): numeric bounds, string lengths and
patterns, ``minItems`` above 1, ``maxItems``, unknown formats, recursive schemas. The simulator's
answers ignore them too, apart from what :mod:`batcher.simulator.answers` reads back out of an
SDK-style description hint.
"""

from __future__ import annotations

from typing import Any, Final

#: The API's message for an object schema without ``additionalProperties: false``.
ADDITIONAL_PROPERTIES: Final = "For 'object' type, 'additionalProperties' must be explicitly set to false"
ROOT_NOT_OBJECT: Final = "the root schema must be of type 'object'"
#: Keywords whose value is one subschema / a list of them / a map of names to them.
_ONE: Final = ("items", "not", "additionalItems", "contains")
_MANY: Final = ("prefixItems", "anyOf", "oneOf", "allOf")
_MAP: Final = ("properties", "$defs", "definitions", "patternProperties")


def strict_problem(schema: dict[str, Any]) -> str | None:
    """Why the API refuses ``schema`` as a structured-output schema, or None when it takes it."""
    root = schema
    seen: set[str] = set()
    while isinstance(root, dict) and "$ref" in root and "type" not in root:
        ref = root["$ref"]
        if not isinstance(ref, str) or ref in seen:
            break
        seen.add(ref)
        target = resolve(schema, ref)
        if target is None:
            return _unresolved(ref)
        root = target
    if not (isinstance(root, dict) and _is_object(root)):
        return ROOT_NOT_OBJECT
    return _walk(schema, schema, 0)


def resolve(root: Any, ref: str) -> Any:
    """The node a local ``#/...`` reference points at inside ``root``; None when it does not."""
    if not ref.startswith("#"):
        return None
    node = root
    if ref in ("#", "#/"):
        return node
    if not ref.startswith("#/"):
        return None
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _unresolved(ref: object) -> str:
    return f"$ref {ref!r} does not resolve: only local references within the schema ('#/...') are supported"


def _is_object(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    if isinstance(kind, list):
        return "object" in kind
    if kind is None:
        return "properties" in node
    return bool(kind == "object")


def _walk(node: Any, root: dict[str, Any], depth: int) -> str | None:
    if not isinstance(node, dict) or depth > 64:
        return None
    ref = node.get("$ref")
    if isinstance(ref, str) and resolve(root, ref) is None:
        return _unresolved(ref)
    if _is_object(node) and node.get("additionalProperties") is not False:
        return ADDITIONAL_PROPERTIES
    subs: list[Any] = [node.get(key) for key in _ONE]
    for key in _MANY:
        if isinstance(node.get(key), list):
            subs.extend(node[key])
    for key in _MAP:
        if isinstance(node.get(key), dict):
            subs.extend(node[key].values())
    for sub in subs:
        problem = _walk(sub, root, depth + 1)
        if problem is not None:
            return problem
    return None
