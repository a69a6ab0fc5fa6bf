"""Loading a job's [output] schema (:func:`load_output`) and the checks made before anything is sent.

``output.schema`` is told apart by its form: a ``.json`` suffix or a ``/`` is a file (relative to the
job file); ``package.module:Class`` is a pydantic model importable from the job's folder (its
``model_json_schema()``); a table is the schema itself. Each problem is one :class:`ConfigError`
naming ``output.schema``: a missing or broken file, a module or class that is not there or not a
pydantic model, a schema jsonschema refuses, a root that is not an object, a ``$ref`` that is remote or
does not resolve inside the schema, a node the API cannot take (see :mod:`batcher.output.strict`).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from batcher.config import ConfigError
from batcher.output.columns import resolve_ref, root_schema
from batcher.output.spec import OutputSpec
from batcher.output.strict import StrictSchemaError, strict_schema

if TYPE_CHECKING:
    from batcher.config import JobConfig

_MODULE_FORM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
#: Keywords whose values are data, not schemas: a "$ref" key inside them is not a reference.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})


def is_module_form(value: str) -> bool:
    """``a.b:C`` names a module and a class; a ``.json`` suffix or a ``/`` names a file."""
    if value.endswith(".json") or "/" in value or "\\" in value:
        return False
    return bool(_MODULE_FORM.match(value))


def load_output(job: JobConfig) -> OutputSpec | None:
    """The job's structured output, loaded and checked; None when the job has no [output]."""
    config = job.output
    if config is None:
        return None
    where = f"{job.path}: output.schema"
    raw = config.schema
    if isinstance(raw, dict):
        schema, source = raw, "inline"
    elif is_module_form(raw):
        schema, source = _from_model(job, raw, where), raw
    else:
        schema, source = _from_file(job, raw, where), raw
    check_schema(schema, where)
    try:
        wire = strict_schema(schema)
    except StrictSchemaError as exc:
        raise ConfigError(f"{where}: at {exc.path or 'the top level'}: {exc.message}") from None
    return OutputSpec(
        schema=schema,
        wire_schema=wire,
        columns=config.columns,
        retry_invalid=config.retry_invalid,
        source=source,
    )


def _from_file(job: JobConfig, name: str, where: str) -> dict[str, Any]:
    path = (job.base_dir / name).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: {path} is a folder, not a JSON Schema file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{where}: {name} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(schema, dict):
        raise ConfigError(f"{where}: {name} holds {type(schema).__name__}, not a JSON Schema object")
    return schema


def _from_model(job: JobConfig, name: str, where: str) -> dict[str, Any]:
    module_name, _, attr = name.partition(":")
    folder = str(job.base_dir)
    saved = list(sys.path)
    sys.path.insert(0, folder)
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or module_name
            if not (module_name == missing or module_name.startswith(missing + ".")):
                # the module is there, but something it imports is not
                raise ConfigError(f"{where}: importing {module_name!r} failed: {exc}") from None
            raise ConfigError(
                f"{where}: module {missing!r} not found (looked in the job's folder {folder} and on the "
                "Python path)"
            ) from None
        except Exception as exc:
            raise ConfigError(
                f"{where}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
            ) from None
    finally:
        sys.path[:] = saved
    try:
        model = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{where}: module {module_name!r} has no attribute {attr!r}") from None
    from pydantic import BaseModel

    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"{where}: {name} is not a pydantic model (a BaseModel subclass)")
    try:
        schema = model.model_json_schema()
    except Exception as exc:
        raise ConfigError(f"{where}: {name} has no JSON schema: {type(exc).__name__}: {exc}") from None
    return schema


def _schema_path(path: Iterable[Any]) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "the top level"


def check_schema(schema: dict[str, Any], where: str) -> None:
    """A schema jsonschema accepts (for the draft its ``$schema`` names), with an object at the root
    and every ``$ref`` local and resolvable; ConfigError otherwise."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        cls = validator_for(schema, default=Draft202012Validator)
    except Exception as exc:
        raise ConfigError(f"{where}: unknown $schema: {exc}") from None
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        message = " ".join(exc.message.split())
        raise ConfigError(
            f"{where}: not a valid JSON Schema: at {_schema_path(exc.absolute_path)}: {message}"
        ) from None
    for path, ref in _refs(schema, ()):
        at = _schema_path(path)
        if not ref.startswith("#"):
            raise ConfigError(
                f"{where}: $ref {ref!r} at {at} is remote; only refs inside the schema (#/...) are supported"
            )
        if resolve_ref(schema, ref) is None:
            raise ConfigError(f"{where}: $ref {ref!r} at {at} does not resolve inside the schema")
    root = root_schema(schema)
    if root is None or root.get("type") != "object":
        shown = None if root is None else root.get("type")
        raise ConfigError(
            f'{where}: the top level must be an object schema (type "object"), not '
            f"{json.dumps(shown) if shown is not None else 'a schema without that type'}: the API "
            "takes objects at the root"
        )


def _refs(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield path, ref
        for key, value in node.items():
            if key not in _DATA_KEYWORDS:
                yield from _refs(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, (*path, str(i)))


def check_column_names(
    spec: OutputSpec, results: Iterable[str], job: JobConfig, carried: Iterable[str] = ()
) -> None:
    """Refuse an output column that collides with a result column or a carried manifest column.

    ``results``: batcher's result columns (``batcher.sink.RESULT_NAMES``, given by the caller: the
    sink imports this package); ``carried``: the manifest's carried columns, as the results name
    them."""
    ours = set(results)
    taken = ours | set(carried)
    for name in spec.column_names():
        if name in taken:
            what = "batcher's result column" if name in ours else "the manifest column"
            if spec.columns == "struct":
                raise ConfigError(
                    f"{job.path}: output.columns: the struct column {name!r} collides with {what} {name!r}"
                )
            raise ConfigError(f"{job.path}: output.schema: property {name!r} collides with {what} {name!r}")
