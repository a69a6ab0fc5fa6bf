"""The strict transform: a user's JSON Schema as the API takes it (``output_config.format``).

The same rules as the official SDK's ``lib/_parse/_transform.py::transform_schema`` (batcher does not
import the SDK at run time; ``tests/output/test_strict.py`` holds the two to each other):
``additionalProperties: false`` on every object (the API answers 400 otherwise), ``oneOf`` becomes
``anyOf``, string formats the decoder supports are kept, ``minItems`` of 0 or 1 is kept, ``$defs``
are transformed and ``$ref`` kept as it is; every other keyword (``minimum``, ``maxLength``,
``pattern``, ``maxItems``, an unsupported ``format``, ...) cannot be enforced by the decoder, so it is
appended to the description, written as the SDK writes it, for the model to follow if it will.
batcher checks those constraints itself after the answer (:meth:`batcher.output.OutputSpec.check`).

Three differences: ``$schema``, ``$id`` and ``$comment`` are left out (they are about the document,
not constraints on the answer: the SDK would append them to the description). And two where the SDK
would fail: a node with neither ``type`` nor ``anyOf``/``oneOf``/
``allOf``/``const``/``enum`` raises :class:`StrictSchemaError` naming its path (the SDK raises a
ValueError without one), and a list ``type`` (``["string", "null"]``, which the SDK cannot take)
becomes an ``anyOf`` of one branch per type first.
"""

from __future__ import annotations

from typing import Any

from batcher.errors import BatcherError

#: The string formats the API's decoder supports (the SDK's ``SupportedStringFormats``).
SUPPORTED_STRING_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}
)

#: Keywords that belong to one JSON type: a branch of a split list ``type`` keeps only its own.
_TYPE_KEYWORDS: dict[str, frozenset[str]] = {
    "object": frozenset(
        {
            "properties",
            "required",
            "additionalProperties",
            "patternProperties",
            "minProperties",
            "maxProperties",
            "propertyNames",
            "dependentRequired",
            "dependentSchemas",
            "unevaluatedProperties",
        }
    ),
    "array": frozenset(
        {
            "items",
            "prefixItems",
            "minItems",
            "maxItems",
            "uniqueItems",
            "contains",
            "minContains",
            "maxContains",
            "unevaluatedItems",
        }
    ),
    "string": frozenset(
        {"minLength", "maxLength", "pattern", "format", "contentEncoding", "contentMediaType"}
    ),
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}),
}
_TYPE_KEYWORDS["integer"] = _TYPE_KEYWORDS["number"]
_SHARED_KEYWORDS = frozenset({"description", "title", "default", "examples"})


class StrictSchemaError(BatcherError, ValueError):
    """A schema node the API cannot take; ``path`` is where it is in the schema ("properties.x").

    Raised by :func:`strict_schema`; :func:`batcher.output.load_output` turns it into a ConfigError."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def is_primitive(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def split_type_list(node: dict[str, Any]) -> dict[str, Any]:
    """``{"type": ["string", "null"], ...}`` as ``{"anyOf": [{"type": "string", ...}, {"type": "null"}]}``.

    Each branch keeps the keywords of its own type and the type-neutral ones; description and title
    stay on the node. A one-element list is just that type."""
    types = node.get("type")
    if not isinstance(types, list):
        return node
    if len(types) == 1:
        return {**node, "type": types[0]}
    rest = {k: v for k, v in node.items() if k != "type"}
    outer: dict[str, Any] = {k: rest.pop(k) for k in ("description", "title") if k in rest}
    branches = []
    for t in types:
        own = _TYPE_KEYWORDS.get(t, frozenset())
        branch: dict[str, Any] = {"type": t}
        for key, value in rest.items():
            typed = any(key in kws for kws in _TYPE_KEYWORDS.values())
            if key in own or not typed:
                branch[key] = value
        branches.append(branch)
    return {**outer, "anyOf": branches}


def _join(path: str, *parts: str) -> str:
    return ".".join(p for p in (path, *parts) if p)


#: Keywords about the schema document rather than the value: left out of what is sent (the SDK
#: would append them to the description as constraints).
META_KEYWORDS = frozenset({"$schema", "$id", "$comment"})


def strict_schema(schema: dict[str, Any], path: str = "") -> dict[str, Any]:
    """``schema`` as the API takes it; raises :class:`StrictSchemaError` where it cannot be."""
    node = split_type_list({k: v for k, v in schema.items() if k not in META_KEYWORDS})
    out: dict[str, Any] = {}

    # $defs first: a root {"$ref": ..., "$defs": ...} (pydantic's RootModel) keeps its definitions.
    defs = node.pop("$defs", None)
    if defs is not None:
        if not isinstance(defs, dict):
            raise StrictSchemaError(_join(path, "$defs"), "must be a table of schemas")
        out["$defs"] = {name: _sub(sub, _join(path, "$defs", name)) for name, sub in defs.items()}

    ref = node.pop("$ref", None)
    if ref is not None:
        out["$ref"] = ref
        return out

    type_ = node.pop("type", None)
    any_of = node.pop("anyOf", None)
    one_of = node.pop("oneOf", None)
    all_of = node.pop("allOf", None)

    enum = node.get("enum")
    if isinstance(enum, list) and enum and all(is_primitive(v) for v in enum):
        out["enum"] = list(node.pop("enum"))
    if "const" in node and is_primitive(node["const"]):
        out["const"] = node.pop("const")
    has_literals = "enum" in out or "const" in out
    if has_literals:
        type_ = None

    if isinstance(any_of, list):
        out["anyOf"] = [_sub(v, _join(path, "anyOf", str(i))) for i, v in enumerate(any_of)]
    elif isinstance(one_of, list):
        out["anyOf"] = [_sub(v, _join(path, "oneOf", str(i))) for i, v in enumerate(one_of)]
    elif isinstance(all_of, list):
        out["allOf"] = [_sub(v, _join(path, "allOf", str(i))) for i, v in enumerate(all_of)]
    elif not has_literals:
        if type_ is None:
            raise StrictSchemaError(
                path,
                "a schema needs a 'type', 'anyOf', 'oneOf' or 'allOf', or a 'const' or non-empty 'enum' "
                "of strings, numbers, booleans or null (the API cannot take it otherwise)",
            )
        out["type"] = type_

    description = node.pop("description", None)
    if description is not None:
        out["description"] = description
    title = node.pop("title", None)
    if title is not None:
        out["title"] = title

    if type_ == "object":
        props = node.pop("properties", {})
        if not isinstance(props, dict):
            raise StrictSchemaError(_join(path, "properties"), "must be a table of schemas")
        out["properties"] = {k: _sub(v, _join(path, "properties", k)) for k, v in props.items()}
        node.pop("additionalProperties", None)
        out["additionalProperties"] = False
        required = node.pop("required", None)
        if required is not None:
            out["required"] = list(required) if isinstance(required, list) else required
    elif type_ == "string":
        fmt = node.pop("format", None)
        if fmt and fmt in SUPPORTED_STRING_FORMATS:
            out["format"] = fmt
        elif fmt:
            node["format"] = fmt  # not enforceable: into the description
    elif type_ == "array":
        items = node.pop("items", None)
        if items is not None:
            out["items"] = _sub(items, _join(path, "items"))
        min_items = node.pop("minItems", None)
        if min_items is not None and min_items in (0, 1):
            out["minItems"] = min_items
        elif min_items is not None:
            node["minItems"] = min_items
    elif type_ not in (None, "boolean", "integer", "number", "null"):
        raise StrictSchemaError(_join(path, "type"), f"{type_!r} is not a JSON Schema type")

    # Whatever is left the decoder cannot enforce: the SDK appends it to the description.
    if node:
        previous = out.get("description")
        out["description"] = (
            (previous + "\n\n" if previous is not None else "")
            + "{"
            + ", ".join(f"{key}: {value}" for key, value in node.items())
            + "}"
        )
    return out


def _sub(schema: object, path: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise StrictSchemaError(path, f"a schema must be an object, not {type(schema).__name__}")
    return strict_schema(schema, path)
