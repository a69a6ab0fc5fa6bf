"""Parquet sink: atomic parts, crash recovery at every step, exactly one row per id, stable schema."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import types
import typing
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest

from batcher.output import OutputSpec
from batcher.records import ImageSent, Result, Row
from batcher.sink import (
    IMAGE_FIELDS,
    RESULT_COLUMNS,
    Sink,
    SinkError,
    coerce,
    column_names,
    part_name,
    read_results,
    temp_name,
)
from batcher.state import JobState

FIELDS = {"title": "string", "text": "string", "score": "double", "n": "int64", "ok": "bool"}


class Crash(Exception):
    """Stands for the process dying at a step: nothing after it runs, nothing is cleaned up."""


def _crash_at(step: str):  # type: ignore[no-untyped-def]
    def hook(name: str) -> None:
        if name == step:
            raise Crash(step)

    return hook


def _result(i: int, text: str = "ok", status: str = "ok") -> Result:
    return Result(
        id=f"r{i:04d}",
        status=status,
        text=f"{text} {i}",
        model="claude-x",
        stop_reason="end_turn",
        input_tokens=100 + i,
        output_tokens=7,
        attempts=1,
        latency_s=0.25,
        request_id=f"req_{i}",
        error_type=None if status == "ok" else "invalid_request_error",
        images=[
            ImageSent(
                source=f"img/{i}.jpg",
                width=640,
                height=480,
                bytes=1000 + i,
                media_type="image/jpeg",
                transport="base64",
                tokens=400,
            )
        ],
        warnings=["small image"] if i % 2 else [],
        cost_usd=0.001,
        fields={"title": f"t{i}", "text": f"manifest text {i}", "score": i / 2, "n": str(i), "ok": "true"},
    )


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def _record(state: JobState, ids: range, **kw) -> None:  # type: ignore[no-untyped-def]
    state.sync_rows([Row(id=f"r{i:04d}", images=[], prompt="", fields={}, index=i) for i in ids])
    for i in ids:
        state.record(_result(i, **kw))


def _ids(out: Path) -> Counter[str]:
    return Counter(read_results(out).column("id").to_pylist())


def _assert_parts_readable(out: Path) -> None:
    import pyarrow.parquet as pq

    results = out / "results"
    assert not list(results.glob(".*")), "temp files left behind"
    for part in results.glob("part-*.parquet"):
        pq.ParquetFile(part).read()


# --- pure helpers ------------------------------------------------------------------------------------


def test_column_names_prefix_collisions() -> None:
    names = column_names({"title": "string", "id": "string", "text": "string", "manifest_text": "int64"})
    assert names == {
        "title": "title",
        "id": "manifest_id",
        "text": "manifest_text",
        "manifest_text": "manifest_manifest_text",
    }


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("x", "string", "x"),
        (3, "string", "3"),
        (True, "string", "true"),
        (None, "int64", None),
        ("12", "int64", 12),
        (4.0, "int64", 4),
        (4.5, "int64", None),
        ("abc", "int64", None),
        ("1.5", "double", 1.5),
        (2, "double", 2.0),
        ("nan?", "double", None),
        ("true", "bool", True),
        ("0", "bool", False),
        ("maybe", "bool", None),
        (False, "bool", False),
    ],
)
def test_coerce(value: object, kind: str, expected: object) -> None:
    assert coerce(value, kind) == expected


#: The column kind a field of this Python type is stored as (None stripped from optional fields).
_KIND_OF_TYPE: dict[object, str] = {str: "string", int: "int64", float: "double", bool: "bool"}
#: Fields stored as another kind than their Python type says, and why.
_STORED_AS = {"finished_at": "timestamp"}  # Unix seconds, written as a UTC timestamp


def _kind(annotation: object) -> str:
    """The column kind of a dataclass field's type, from the type alone (not from RESULT_COLUMNS)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _kind(args[0])
    if typing.get_origin(annotation) is typing.Literal and all(isinstance(a, str) for a in args):
        return "string"
    if typing.get_origin(annotation) is list and args == [str]:
        return "list<string>"
    if typing.get_origin(annotation) is list and args == [ImageSent]:
        return "images"
    return _KIND_OF_TYPE[annotation]


def _declared(cls: type, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    hints = typing.get_type_hints(cls)
    return [
        (f.name, _STORED_AS.get(f.name) or _kind(hints[f.name])) for f in fields(cls) if f.name not in skip
    ]


def test_every_result_field_has_a_column_of_its_type_and_no_column_is_extra() -> None:
    # A field added to Result (or ImageSent) without a column, a column without a field, or a
    # column whose type disagrees with its field fails here. ``fields`` is the manifest's own
    # columns, which follow the result columns (test_written_part_has_the_documented_schema).
    # ``data`` (a structured answer) becomes the [output] columns (test_output_columns_*).
    assert list(RESULT_COLUMNS) == _declared(Result, skip=("fields", "data", "cache_saved_usd"))
    assert list(IMAGE_FIELDS) == _declared(ImageSent)


def test_kind_reads_types_not_names() -> None:
    # The helper above must tell types apart, or the test above could not fail.
    assert [_kind(t) for t in (str | None, int, float | None, typing.Literal["a", "b"], list[str])] == [
        "string",
        "int64",
        "double",
        "string",
        "list<string>",
    ]
    with pytest.raises(KeyError):
        _kind(dict[str, int])


#: The results schema as a part file holds it (Parquet names a list's items "element"), written
#: out: a change to it is a change to every reader's data.
EXPECTED_SCHEMA = [
    ("id", "string"),
    ("status", "string"),
    ("text", "string"),
    ("model", "string"),
    ("stop_reason", "string"),
    ("input_tokens", "int64"),
    ("output_tokens", "int64"),
    ("cache_read_input_tokens", "int64"),
    ("cache_creation_input_tokens", "int64"),
    ("attempts", "int64"),
    ("latency_s", "double"),
    ("request_id", "string"),
    ("error_type", "string"),
    ("error_message", "string"),
    (
        "images",
        "list<element: struct<source: string, width: int64, height: int64, bytes: int64, "
        "media_type: string, transport: string, tokens: int64, file_id: string>>",
    ),
    ("warnings", "list<element: string>"),
    ("cost_usd", "double"),
    ("finished_at", "timestamp[us, tz=UTC]"),
    ("mode", "string"),
    ("tool_input", "string"),
    # the manifest's columns, in its order; "text" collides with a result column
    ("title", "string"),
    ("manifest_text", "string"),
    ("score", "double"),
    ("n", "int64"),
    ("ok", "bool"),
]


def test_written_part_has_the_documented_schema(out: Path) -> None:
    import pyarrow.parquet as pq

    with JobState.open(out) as state:
        _record(state, range(3))
        assert Sink(out, state, FIELDS).export() == 3
    (part,) = (out / "results").glob("part-*.parquet")
    assert [(f.name, str(f.type)) for f in pq.read_schema(part)] == EXPECTED_SCHEMA


def test_importing_storage_modules_does_not_import_pyarrow() -> None:
    code = (
        "import sys, batcher.sink, batcher.state, batcher.manifest, batcher.records;"
        "print('pyarrow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- export -------------------------------------------------------------------------------------------


def test_export_parts_schema_and_values(out: Path) -> None:
    with JobState.open(out) as state:
        sink = Sink(out, state, FIELDS)
        _record(state, range(25))
        assert sink.export(max_rows=10) == 25
        assert sink.export() == 0  # nothing new: no empty part
        _record(state, range(25, 30))
        assert sink.export() == 5
        parts = sorted((out / "results").glob("part-*.parquet"))
        assert [p.name for p in parts] == [part_name(i) for i in (1, 2, 3, 4)]
        import pyarrow.parquet as pq

        schemas = {str(pq.read_schema(p)) for p in parts}
        assert len(schemas) == 1 and pq.read_schema(parts[0]).equals(sink.schema)
        table = read_results(out)
        assert table.num_rows == 30 and set(_ids(out).values()) == {1}
        import pyarrow.compute as pc

        row = table.filter(pc.equal(table.column("id"), "r0003")).to_pylist()[0]
        assert row["text"] == "ok 3" and row["manifest_text"] == "manifest text 3"
        assert row["score"] == 1.5 and row["n"] == 3 and row["ok"] is True
        assert row["images"] == [
            {
                "source": "img/3.jpg",
                "width": 640,
                "height": 480,
                "bytes": 1003,
                "media_type": "image/jpeg",
                "transport": "base64",
                "tokens": 400,
                "file_id": None,
            }
        ]
        assert row["warnings"] == ["small image"] and row["finished_at"].tzinfo is not None
        assert state.summary().exported_rows == 30 and state.summary().parts == 4


def test_read_results_empty(out: Path) -> None:
    assert read_results(out).num_rows == 0
    assert read_results(out).schema.names == [n for n, _ in RESULT_COLUMNS]


def test_fields_fixed_by_first_sink(out: Path) -> None:
    with JobState.open(out) as state:
        Sink(out, state, {"title": "string", "n": "int64"})
        later = Sink(out, state, {"title": "string", "n": "string", "extra": "string"})
        assert later.fields == {"title": "string", "n": "int64"}
        assert any("extra" in w for w in later.warnings) and any("n" in w for w in later.warnings)
        assert Sink(out, state).fields == {"title": "string", "n": "int64"}


# --- crashes at each step ----------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["written", "committed", "renamed"])
def test_crash_at_each_export_step_then_recover(out: Path, step: str) -> None:
    with JobState.open(out) as state:
        sink = Sink(out, state, FIELDS, on_step=_crash_at(step))
        _record(state, range(10))
        with pytest.raises(Crash):
            sink.export()
        # Whatever the step, a reader only ever sees complete parts.
        visible = _ids(out)
        assert set(visible.values()) <= {1}
    with JobState.open(out) as state:  # the next run
        sink = Sink(out, state, FIELDS)
        report = sink.recover()
        if step == "written":
            assert report.deleted_files == [temp_name(part_name(1))]
        elif step == "committed":
            assert report.renamed == [part_name(1)]
        sink.export()
        _record(state, range(10, 15))
        sink.export()
    assert _ids(out) == Counter({f"r{i:04d}": 1 for i in range(15)})
    _assert_parts_readable(out)


def test_recorded_part_with_no_file_is_exported_again(out: Path) -> None:
    with JobState.open(out) as state:
        sink = Sink(out, state, FIELDS)
        _record(state, range(6))
        sink.export(max_rows=3)
        (out / "results" / part_name(2)).unlink()  # e.g. lost with its folder entry
        report = Sink(out, state, FIELDS).recover()
        assert report.dropped_parts == [part_name(2)] and report.requeued_rows == 3
        sink.export()
    assert _ids(out) == Counter({f"r{i:04d}": 1 for i in range(6)})


def test_part_whose_transaction_was_lost_is_deleted(out: Path) -> None:
    """Power loss can keep a renamed file but roll back the commit that recorded it."""
    with JobState.open(out) as state:
        sink = Sink(out, state, FIELDS)
        _record(state, range(4))
        sink.export()
        # Forge the rollback: the state forgets the part, the file stays.
        state.drop_part(1)
        report = Sink(out, state, FIELDS).recover()
        assert report.deleted_files == [part_name(1)]
        sink.export()
    assert _ids(out) == Counter({f"r{i:04d}": 1 for i in range(4)})


_KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[3])
    from tests.test_sink import FIELDS, _record
    from batcher.sink import Sink
    from batcher.state import JobState
    out, step = sys.argv[1], sys.argv[2]
    state = JobState.open(out)
    state.lock()
    def die(name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)
    _record(state, range(int(sys.argv[4]), 40))
    Sink(out, state, FIELDS, on_step=die).export(max_rows=15)
""")


@pytest.mark.parametrize("step", ["committed", "rewrite-written"])
def test_sigkill_mid_export_then_recover(out: Path, step: str) -> None:
    from tests.conftest import REPO

    start = 0
    if step == "rewrite-written":
        # Start with exported rows, half of which the killed run answers again: a dirty part to rewrite.
        with JobState.open(out) as state:
            _record(state, range(10), text="first")
            Sink(out, state, FIELDS).export()
        start = 5
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_EXPORT, str(out), step, str(REPO), str(start)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with JobState.open(out) as state:
        state.lock()
        sink = Sink(out, state, FIELDS)
        sink.recover()
        sink.export()
        table = read_results(out)
    assert _ids(out) == Counter({f"r{i:04d}": 1 for i in range(40)})
    assert set(table.column("text").to_pylist()) == (
        {f"first {i}" for i in range(start)} | {f"ok {i}" for i in range(start, 40)}
    )
    _assert_parts_readable(out)


# --- retried rows replace their old version -----------------------------------------------------------


def test_rerecorded_row_rewrites_its_old_part(out: Path) -> None:
    with JobState.open(out) as state:
        sink = Sink(out, state, FIELDS)
        _record(state, range(6), status="error", text="bad")
        sink.export(max_rows=3)  # parts 1 (r0-r2) and 2 (r3-r5)
        state.record(_result(1, text="retried"))
        for i in (3, 4, 5):  # every row of part 2 retried: part 2 disappears
            state.record(_result(i, text="retried"))
        sink.export()
        table = read_results(out)
        names = sorted(p.name for p in (out / "results").glob("part-*.parquet"))
        assert names == [part_name(1), part_name(3)]
        assert [p.rows for p in state.parts()] == [2, 4] and not any(p.dirty for p in state.parts())
    by_id = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    assert by_id == {
        "r0000": "bad 0",
        "r0001": "retried 1",
        "r0002": "bad 2",
        "r0003": "retried 3",
        "r0004": "retried 4",
        "r0005": "retried 5",
    }
    assert table.num_rows == 6


def test_crash_during_rewrite_then_recover(out: Path) -> None:
    with JobState.open(out) as state:
        _record(state, range(4), status="error", text="bad")
        Sink(out, state, FIELDS).export()
        state.record(_result(2, text="retried"))
        with pytest.raises(Crash):
            Sink(out, state, FIELDS, on_step=_crash_at("rewrite-written")).export()
        assert _ids(out)["r0002"] == 1  # the old version only: the new one is not out yet
        report = Sink(out, state, FIELDS).recover()
        assert report.deleted_files == [temp_name(part_name(1))] and report.rewritten == [part_name(1)]
        Sink(out, state, FIELDS).export()
        table = read_results(out)
    assert _ids(out) == Counter({f"r{i:04d}": 1 for i in range(4)})
    assert "retried 2" in table.column("text").to_pylist()


def test_row_rerecorded_while_its_part_is_written(out: Path) -> None:
    """A record() landing between reading a row and committing its part (export in a thread)."""
    with JobState.open(out) as state:
        _record(state, range(5), status="error", text="bad")

        fired = []

        def rerecord(name: str) -> None:
            if name == "written" and not fired:
                fired.append(name)
                state.record(_result(2, text="late"))

        Sink(out, state, FIELDS, on_step=rerecord).export()
        table = read_results(out)
        assert not any(p.dirty for p in state.parts())
    assert _ids(out) == Counter({f"r{i:04d}": 1 for i in range(5)})
    assert "late 2" in table.column("text").to_pylist()


def test_transient_results_exported_then_replaced(out: Path) -> None:
    with JobState.open(out) as state:
        sink = Sink(out, state, FIELDS)
        state.sync_rows([Row(id="r0000", images=[], prompt="", fields={}, index=0)])
        failed = _result(0, status="error", text="gave up")
        failed.error_type = "overloaded_error"
        state.record(failed, final=False)
        sink.export()
        assert list(state.remaining(False)) == ["r0000"]
        assert read_results(out).column("error_type").to_pylist() == ["overloaded_error"]
        state.record(_result(0, text="fine"))
        sink.export()
        assert list(state.remaining(False)) == []
    table = read_results(out)
    assert table.column("status").to_pylist() == ["ok"] and table.column("text").to_pylist() == ["fine 0"]


# --- compaction ---------------------------------------------------------------------------------------


def _part(part_id: int, rows: int, dirty: int = 0, state: str = "final"):  # type: ignore[no-untyped-def]
    from batcher.state import PartRecord

    return PartRecord(
        part_id=part_id,
        name=part_name(part_id),
        rows=rows,
        state=state,  # type: ignore[arg-type]
        dirty=dirty,
    )


def test_plan_compaction_groups_small_clean_parts() -> None:
    from batcher.sink import plan_compaction

    parts = [
        _part(1, 10),
        _part(2, 10),
        _part(3, 100),
        _part(4, 5),
        _part(5, 5, dirty=1),
        _part(6, 40),
        _part(7, 40),
        _part(8, 30),
        _part(9, 1, state="pending"),
    ]
    groups = plan_compaction(parts, target_rows=100)
    assert [[p.part_id for p in g] for g in groups] == [[1, 2], [6, 7]]
    assert plan_compaction([_part(1, 10)], 100) == []


def test_compact_merges_small_parts_exactly_once(out: Path) -> None:
    with JobState.open(out) as state:
        sink = Sink(out, state, FIELDS)
        _record(state, range(20))
        sink.export(max_rows=3)  # 7 parts
        state.record(_result(4, text="retried"))  # part 2 dirty: rewritten before merging
        assert sink.compact(target_rows=10) == 6
        names = sorted(p.name for p in (out / "results").glob("part-*.parquet"))
        # [3, 2, 3 | 3, 3, 3 | 2] -> groups of 8 and 9 rows; the last part is left alone.
        assert [p.rows for p in state.parts()] == [2, 8, 9] and len(names) == 3
        sink.export()
        table = read_results(out)
    assert _ids(out) == Counter({f"r{i:04d}": 1 for i in range(20)})
    assert "retried 4" in table.column("text").to_pylist()
    _assert_parts_readable(out)


@pytest.mark.parametrize("step", ["merge-written", "merge-unlinked"])
def test_crash_during_compaction_then_recover(out: Path, step: str) -> None:
    with JobState.open(out) as state:
        _record(state, range(12))
        Sink(out, state, FIELDS).export(max_rows=2)
        with pytest.raises(Crash):
            Sink(out, state, FIELDS, on_step=_crash_at(step)).compact(target_rows=100)
        assert set(_ids(out).values()) <= {1}
        Sink(out, state, FIELDS).recover()
        Sink(out, state, FIELDS).export()
    assert _ids(out) == Counter({f"r{i:04d}": 1 for i in range(12)})
    _assert_parts_readable(out)


# --- structured output: typed columns ------------------------------------------------------------


def _output(columns: typing.Any = "flatten", schema: dict[str, typing.Any] | None = None) -> OutputSpec:
    from batcher.output.strict import strict_schema
    from tests.output.samples import TAGS

    schema = schema or TAGS
    return OutputSpec(schema, strict_schema(schema), columns, 1, "test")


TAG_DATA = {
    "caption": "A red bus.",
    "tags": ["bus", "street"],
    "counts": {"people": 2, "animals": 0, "vehicles": 1},
    "has_text": True,
    "is_photo": True,
    "dominant_colour": {"name": "red", "hex": "#cc0000"},
    "setting": "outdoor",
}


def _record_answers(state: JobState, ids: range) -> None:
    """Rows answered with TAG_DATA (people = the row's number); every third one an error row."""
    state.sync_rows([Row(id=f"r{i:04d}", images=[], prompt="", fields={}, index=i) for i in ids])
    for i in ids:
        result = _result(i, status="error" if i % 3 == 0 else "ok")
        if result.status == "ok":
            result.data = {**TAG_DATA, "counts": {**TAG_DATA["counts"], "people": i}}
        state.record(result)


def _not_null(name: str, type_: typing.Any) -> typing.Any:
    import pyarrow as pa

    return pa.field(name, type_, nullable=False)


def test_output_columns_flatten_are_typed_between_result_and_manifest_columns(out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with JobState.open(out) as state:
        sink = Sink(out, state, FIELDS, output=_output())
        _record_answers(state, range(6))
        assert sink.export(max_rows=4) == 6
    parts = sorted((out / "results").glob("part-*.parquet"))
    assert len(parts) == 2
    schema = pq.read_schema(parts[0])
    assert all(pq.read_schema(p).equals(schema) for p in parts)
    names = schema.names
    result_names = [n for n, _ in RESULT_COLUMNS]
    tag_names = [*TAG_DATA, "text_content"]
    assert names == [*result_names, *tag_names, "title", "manifest_text", "score", "n", "ok"]
    assert schema.field("caption").type == pa.string()
    assert schema.field("tags").type == pa.list_(pa.field("element", pa.string()))
    assert schema.field("counts").type == pa.struct(
        [_not_null("people", pa.int64()), _not_null("animals", pa.int64()), _not_null("vehicles", pa.int64())]
    )
    assert schema.field("has_text").type == pa.bool_()
    assert schema.field("dominant_colour").type == pa.struct(
        [_not_null("name", pa.string()), _not_null("hex", pa.string())]
    )
    assert all(schema.field(n).nullable for n in tag_names)
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert rows["r0004"]["counts"] == {"people": 4, "animals": 0, "vehicles": 1}
    assert rows["r0004"]["tags"] == ["bus", "street"] and rows["r0004"]["setting"] == "outdoor"
    assert rows["r0004"]["text_content"] is None  # optional, not answered
    assert rows["r0003"]["status"] == "error"
    assert all(rows["r0003"][n] is None for n in tag_names)  # error rows: nulls


def test_output_struct_is_one_column_data(out: Path) -> None:
    import pyarrow.parquet as pq

    with JobState.open(out) as state:
        sink = Sink(out, state, output=_output("struct"))
        _record_answers(state, range(3))
        assert sink.export() == 3
    (part,) = (out / "results").glob("part-*.parquet")
    schema = pq.read_schema(part)
    assert schema.names == [n for n, _ in RESULT_COLUMNS] + ["data"]
    assert schema.field("data").type.field("counts").type.field("people").type == "int64"
    rows = {r["id"]: r for r in read_results(out).to_pylist()}
    assert rows["r0001"]["data"]["counts"]["people"] == 1
    assert rows["r0001"]["data"]["text_content"] is None
    assert rows["r0000"]["data"] is None


def test_output_schema_is_the_same_in_every_part_run_compaction_and_removed(out: Path) -> None:
    import pyarrow.parquet as pq

    with JobState.open(out) as state:
        sink = Sink(out, state, FIELDS, output=_output())
        _record_answers(state, range(3))  # error rows only in the first part: r0000
        sink.export(max_rows=1)
    with JobState.open(out) as state:
        later = Sink(out, state, FIELDS, output=_output())
        _record_answers(state, range(3, 5))
        later.export(max_rows=1)
        schemas = [pq.read_schema(p) for p in sorted((out / "results").glob("part-*.parquet"))]
        assert len(schemas) == 5 and all(s.equals(later.schema) for s in schemas)
        assert later.compact(target_rows=100) == 5
        (merged,) = (out / "results").glob("part-*.parquet")
        assert pq.read_schema(merged).equals(later.schema)
        # rows the manifest no longer has: removed.parquet has the parts' schema
        state.sync_rows([Row(id="r0004", images=[], prompt="", fields={}, index=4)])
        assert later.retire_removed() == 4
        assert pq.read_schema(out / "removed" / "removed.parquet").equals(later.schema)
    assert read_results(out).column("counts").to_pylist() == [{"people": 4, "animals": 0, "vehicles": 1}]


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("tags", "other"),
        ("tags", "struct"),
        ("tags", None),
        (None, "tags"),
    ],
)
def test_a_changed_output_is_refused_once_the_folder_holds_results(
    out: Path, first: str | None, then: str | None
) -> None:
    from batcher.exits import EXIT_CONFIG

    other = {"type": "object", "properties": {"score": {"type": "number"}}}
    specs = {"tags": _output(), "struct": _output("struct"), "other": _output(schema=other), None: None}
    with JobState.open(out) as state:
        Sink(out, state, output=specs[first])
        Sink(out, state, output=specs[first])  # the same: fine
        Sink(out, state, output=specs[then])  # nothing written yet: the new one is taken
        Sink(out, state, output=specs[first])
        _record_answers(state, range(2))
        with pytest.raises(SinkError) as caught:
            Sink(out, state, output=specs[then])
        assert caught.value.exit_code == EXIT_CONFIG
        assert str(caught.value) == (
            f"{out}: output.schema: differs from the one this output folder was written with (its "
            "parts have other columns); write to a new --out"
        )
        Sink(out, state, output=specs[first]).export()  # the original still writes


def test_a_folder_from_before_structured_output_takes_no_output_only(out: Path) -> None:
    with JobState.open(out) as state:
        Sink(out, state).export()
        _record(state, range(2))
        state.set_meta("sink.output", None)  # as a state written before [output] existed
        with pytest.raises(SinkError):
            Sink(out, state, output=_output())
        Sink(out, state).export()


def test_an_output_column_that_collides_with_a_manifest_column_is_not_written(out: Path) -> None:
    spec = _output(schema={"type": "object", "properties": {"title": {"type": "string"}}})
    with JobState.open(out) as state, pytest.raises(SinkError, match="'title' would appear twice"):
        Sink(out, state, {"title": "string"}, output=spec)
