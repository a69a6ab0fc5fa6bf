"""load_output: a schema from a file, a pydantic model or an inline table, and every refusal's message."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from batcher.config import ConfigError, JobConfig, parse_job
from batcher.output import check_column_names, load_output
from batcher.output.schema import is_module_form
from batcher.output.strict import strict_schema
from batcher.sink import RESULT_NAMES
from tests.output.samples import TAGS


def _job(folder: Path, output: dict[str, Any] | None) -> JobConfig:
    data: dict[str, Any] = {
        "input": {"manifest": "m.jsonl", "prompt": "x"},
        "request": {"model": "claude-haiku-5-5", "max_tokens": 100},
    }
    if output is not None:
        data["output"] = output
    return parse_job(data, folder / "job.toml")


def _refused(folder: Path, schema: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_output(_job(folder, {"schema": schema}))
    message = str(caught.value)
    assert message.startswith(f"{folder / 'job.toml'}: output.schema: ")
    assert "\n" not in message
    return message.split("output.schema: ", 1)[1]


def test_no_output_table_is_none(tmp_path: Path) -> None:
    assert load_output(_job(tmp_path, None)) is None


def test_a_file_relative_to_the_job(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "t.json").write_text(json.dumps(TAGS))
    spec = load_output(_job(tmp_path, {"schema": "schemas/t.json", "columns": "struct", "retry_invalid": 3}))
    assert spec is not None
    assert spec.schema == TAGS
    assert spec.wire_schema == strict_schema(TAGS)
    assert (spec.columns, spec.retry_invalid, spec.source) == ("struct", 3, "schemas/t.json")
    assert spec.column_names() == ["data"]


def test_an_inline_table(tmp_path: Path) -> None:
    spec = load_output(
        _job(tmp_path, {"schema": {"type": "object", "properties": {"a": {"type": "integer"}}}})
    )
    assert spec is not None
    assert spec.source == "inline"
    assert spec.column_names() == ["a"]
    assert spec.wire_schema["additionalProperties"] is False


MODEL = """
from pydantic import BaseModel

class Inner(BaseModel):
    n: int

class Tags(BaseModel):
    caption: str
    inner: Inner | None = None

NOT_A_MODEL = 3
"""


def test_a_pydantic_model_from_the_jobs_folder(tmp_path: Path) -> None:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "schemas_o15.py").write_text(MODEL)
    before = list(sys.path)
    try:
        spec = load_output(_job(tmp_path, {"schema": "mypkg.schemas_o15:Tags"}))
    finally:
        sys.modules.pop("mypkg.schemas_o15", None)
        sys.modules.pop("mypkg", None)
    assert sys.path == before, "the job's folder is taken off the path again"
    assert spec is not None
    assert spec.source == "mypkg.schemas_o15:Tags"
    assert spec.column_names() == ["caption", "inner"]
    assert "$defs" in spec.schema
    assert spec.check('{"caption": "c", "inner": {"n": 1}}').problem is None


@pytest.mark.parametrize(
    ("value", "module"),
    [
        ("schemas/tags.json", False),
        ("tags.json", False),
        ("a.b:C", True),
        ("mod:Class", True),
        ("dir/mod:Class", False),
        ("tags", False),
        ("a:b:c", False),
    ],
)
def test_a_path_and_a_module_are_told_apart_by_form(value: str, module: bool) -> None:
    assert is_module_form(value) is module


def test_refusals_of_a_model(tmp_path: Path) -> None:
    (tmp_path / "models_o15.py").write_text(MODEL)
    (tmp_path / "broken_o15.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "needs_o15.py").write_text("import nosuchdependency_o15\n")
    try:
        assert _refused(tmp_path, "nosuchmod_o15:X").startswith("module 'nosuchmod_o15' not found")
        assert _refused(tmp_path, "models_o15:Missing") == "module 'models_o15' has no attribute 'Missing'"
        assert _refused(tmp_path, "models_o15:NOT_A_MODEL") == (
            "models_o15:NOT_A_MODEL is not a pydantic model (a BaseModel subclass)"
        )
        assert _refused(tmp_path, "broken_o15:X") == "importing 'broken_o15' failed: RuntimeError: boom"
        assert _refused(tmp_path, "needs_o15:X") == (
            "importing 'needs_o15' failed: No module named 'nosuchdependency_o15'"
        )
        assert _refused(tmp_path, "models_o15.sub:X").startswith("module 'models_o15.sub' not found")
    finally:
        for name in ("models_o15", "broken_o15", "needs_o15"):
            sys.modules.pop(name, None)


def test_refusals_of_a_file(tmp_path: Path) -> None:
    assert _refused(tmp_path, "nope.json") == f"no such file {tmp_path / 'nope.json'}"
    (tmp_path / "bad.json").write_text('{"type": "object",\n "properties": }')
    assert _refused(tmp_path, "bad.json") == "bad.json is not JSON: Expecting value at line 2 column 16"
    (tmp_path / "list.json").write_text("[]")
    assert _refused(tmp_path, "list.json") == "list.json holds list, not a JSON Schema object"
    (tmp_path / "dir.json").mkdir()
    assert _refused(tmp_path, "dir.json").endswith("is a folder, not a JSON Schema file")


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "strin"}}},
            "not a valid JSON Schema: at properties.a.type: 'strin' is not valid under any of the given "
            "schemas",
        ),
        (
            {"type": "object", "required": "a"},
            "not a valid JSON Schema: at required: 'a' is not of type 'array'",
        ),
        (
            {"type": "array", "items": {"type": "string"}},
            'the top level must be an object schema (type "object"), not "array": the API takes objects '
            "at the root",
        ),
        (
            {"properties": {"a": {"type": "string"}}},
            'the top level must be an object schema (type "object"), not a schema without that type: '
            "the API takes objects at the root",
        ),
        (
            {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}},
            "$ref '#/$defs/Missing' at properties.a does not resolve inside the schema",
        ),
        (
            {"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}},
            "$ref 'https://example.com/s.json' at properties.a is remote; only refs inside the schema "
            "(#/...) are supported",
        ),
        (
            {"type": "object", "properties": {"a": {"description": "anything"}}},
            "at properties.a: a schema needs a 'type', 'anyOf', 'oneOf' or 'allOf', or a 'const' or "
            "non-empty 'enum' of strings, numbers, booleans or null (the API cannot take it otherwise)",
        ),
    ],
)
def test_refusals_of_a_schema(tmp_path: Path, schema: dict[str, Any], message: str) -> None:
    assert _refused(tmp_path, schema) == message


def test_a_ref_inside_data_keywords_is_not_a_reference(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"a": {"const": {"$ref": "#/nowhere"}, "type": "object"}}}
    assert load_output(_job(tmp_path, {"schema": schema})) is not None


def test_column_collisions(tmp_path: Path) -> None:
    job = _job(tmp_path, {"schema": {"type": "object", "properties": {"status": {"type": "string"}}}})
    spec = load_output(job)
    assert spec is not None
    with pytest.raises(
        ConfigError, match=r"output.schema: property 'status' collides with batcher's result column 'status'$"
    ):
        check_column_names(spec, RESULT_NAMES, job)
    job = _job(tmp_path, {"schema": {"type": "object", "properties": {"title": {"type": "string"}}}})
    spec = load_output(job)
    assert spec is not None
    with pytest.raises(
        ConfigError,
        match=r"^.*job.toml: output.schema: property 'title' collides with the manifest column 'title'$",
    ):
        check_column_names(spec, RESULT_NAMES, job, ["title"])
    check_column_names(spec, RESULT_NAMES, job)  # no collision: no error


def test_struct_mode_collides_as_data(tmp_path: Path) -> None:
    job = _job(
        tmp_path,
        {"schema": {"type": "object", "properties": {"status": {"type": "string"}}}, "columns": "struct"},
    )
    spec = load_output(job)
    assert spec is not None
    check_column_names(spec, RESULT_NAMES, job)
    with pytest.raises(
        ConfigError,
        match=r"output\.columns: the struct column 'data' collides with the manifest column 'data'",
    ):
        check_column_names(spec, RESULT_NAMES, job, ["data"])


def test_importing_the_package_is_light_and_checking_needs_no_pyarrow() -> None:
    import subprocess

    code = (
        "import sys, batcher.output;"
        "light = 'jsonschema' not in sys.modules and 'pyarrow' not in sys.modules;"
        "from batcher.config import load_job;"
        "spec = batcher.output.load_output(load_job('jobs/tags.toml'));"
        "spec.check('{}'); spec.row_values(None); spec.column_types();"
        "print(light, 'pyarrow' in sys.modules)"
    )
    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["True", "False"]
