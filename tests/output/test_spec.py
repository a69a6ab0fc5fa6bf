"""OutputSpec.check: one answer parsed and validated against the user's own schema, one-line problems."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batcher.output import Checked, OutputSpec
from batcher.output.strict import strict_schema
from batcher.simulator.answers import instance
from tests.output.samples import PYDANTIC, SDK_SAMPLES, TAGS


def _spec(schema: dict[str, Any], columns: Any = "flatten") -> OutputSpec:
    return OutputSpec(schema, strict_schema(schema), columns, 1, "test")


GOOD = (
    '{"caption": "A red bus.", "tags": ["bus", "street"], "counts": {"people": 2, "animals": 0, '
    '"vehicles": 1}, "has_text": true, "is_photo": true, "dominant_colour": {"name": "red", '
    '"hex": "#cc0000"}, "setting": "outdoor"}'
)


def test_a_valid_answer_is_its_data() -> None:
    checked = _spec(TAGS).check(GOOD)
    assert checked.problem is None
    assert checked.data is not None
    assert checked.data["counts"] == {"people": 2, "animals": 0, "vehicles": 1}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (GOOD.replace('"people": 2', '"people": -1'), "counts.people: -1 is less than the minimum of 0"),
        (GOOD.replace('"street"]', '"street", ""]'), "tags.2: '' should be non-empty"),
        (
            GOOD.replace('"outdoor"', '"space"'),
            "setting: 'space' is not one of ['indoor', 'outdoor', 'unknown']",
        ),
        (GOOD.replace('"has_text": true, ', ""), "top level: 'has_text' is a required property"),
        (GOOD.replace('"caption": "A red bus."', '"caption": "' + "x" * 401 + '"'), "caption: '"),
        ("[1, 2]", "top level: not an object but an array"),
        ('"just text"', "top level: not an object but a string"),
    ],
)
def test_an_invalid_answer_names_the_json_path(text: str, problem: str) -> None:
    checked = _spec(TAGS).check(text)
    assert checked.data is None
    assert checked.problem is not None
    assert checked.problem.startswith(problem)
    assert "\n" not in checked.problem


def test_a_long_value_is_cut_in_the_problem() -> None:
    problem = _spec(TAGS).check(GOOD.replace('"A red bus."', '"' + "x" * 5000 + '"')).problem
    assert problem is not None
    assert problem.startswith("caption: 'xxx")
    assert problem.endswith("...")
    assert len(problem) < 400


def test_json_cut_off_is_not_json_with_where() -> None:
    checked = _spec(TAGS).check(GOOD[:57])
    assert checked == Checked(None, checked.problem)
    assert checked.problem is not None
    assert checked.problem.startswith("not JSON: ")
    assert "char 57" in checked.problem or "column 58" in checked.problem


def test_formats_are_checked() -> None:
    spec = _spec({"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}})
    assert spec.check('{"at": "2026-12-04T05:00:00Z"}').problem is None
    assert spec.check('{"at": "yesterday"}').problem == "at: 'yesterday' is not a 'date-time'"


def test_refs_are_followed_in_validation() -> None:
    spec = _spec(PYDANTIC)
    ok = '{"caption": "c", "boxes": [{"x": 1, "y": 2}], "colour": "red", "mood": "calm", "confidence": 0.5}'
    assert spec.check(ok).problem is None
    assert (
        spec.check(ok.replace('"x": 1', '"x": -1')).problem == "boxes.0.x: -1 is less than the minimum of 0"
    )
    assert (
        spec.check(ok.replace('"red"', '"blue"')).problem == "colour: 'blue' is not one of ['red', 'green']"
    )


def test_the_draft_its_schema_names_is_used() -> None:
    # Draft 4: exclusiveMaximum is a boolean modifier of maximum; 2020-12 would refuse the schema.
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {"n": {"type": "integer", "maximum": 3, "exclusiveMaximum": True}},
    }
    spec = OutputSpec(draft4, {}, "flatten", 1, "test")
    assert spec.check('{"n": 2}').problem is None
    assert spec.check('{"n": 3}').problem == "n: 3 is greater than or equal to the maximum of 3"


def test_the_validator_is_built_once() -> None:
    spec = _spec(TAGS)
    assert spec.validator() is spec.validator()


def test_the_fingerprint_is_the_wire_schema_and_the_columns() -> None:
    a, b = _spec(TAGS), _spec(dict(reversed(list(TAGS.items()))))
    assert a.fingerprint == b.fingerprint  # key order does not matter
    assert a.fingerprint != _spec(TAGS, "struct").fingerprint
    assert a.fingerprint != _spec(PYDANTIC).fingerprint
    assert len(a.fingerprint) == 64


@pytest.mark.parametrize("name", SDK_SAMPLES)
def test_the_simulators_answer_to_the_wire_schema_is_checked(name: str) -> None:
    # The simulator answers from the wire schema (constraints only described), so its answers
    # may fail the user's constraints; for the shipped tags schema they must not.
    schema = SDK_SAMPLES[name]
    spec = _spec(schema)
    text = orjson.dumps(instance(spec.wire_schema, "Image 1: 320x240 nonce=r1")).decode()
    checked = spec.check(text)
    if name == "tags":
        assert checked.problem is None
    assert (checked.data is None) == (checked.problem is not None)


def test_a_spec_pickles_without_its_caches() -> None:
    import pickle

    spec = _spec(TAGS)
    assert spec.check(GOOD).problem is None  # the validator is built
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec
    assert copy.check(GOOD).problem is None
    assert copy.column_types() == spec.column_types()


def test_a_valid_value_no_column_can_hold_is_refused() -> None:
    spec = _spec(TAGS)
    huge = GOOD.replace('"people": 2', '"people": 1e20')
    assert spec.check(huge).problem == "counts.people: 1e+20 does not fit the column type int64"
    big = GOOD.replace('"people": 2', f'"people": {2**63}')
    assert spec.check(big).problem == f"counts.people: {2**63} does not fit the column type int64"
    assert spec.check(GOOD.replace('"people": 2', '"people": 2.0')).problem is None
    struct = _spec(TAGS, "struct")
    assert struct.check(huge).problem == "counts.people: 1e+20 does not fit the column type int64"
