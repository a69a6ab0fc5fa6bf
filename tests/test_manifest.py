"""Manifests: CSV, JSONL and Parquet streamed as rows; column checks; templates; ids; bad rows."""

from __future__ import annotations

import csv
import json
import time
import tracemalloc
from pathlib import Path

import pytest

from batcher.errors import RowFailure
from batcher.manifest import (
    Manifest,
    ManifestError,
    derive_id,
    detect_format,
    open_manifest,
    parse_images,
    render_template,
    resolve_image,
    template_fields,
)
from batcher.records import custom_id_for
from batcher.state import JobState


def _csv(path: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> Path:
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _open(path: Path, **kw):  # type: ignore[no-untyped-def]
    args = {"id_column": None, "image_column": "image", "prompt_column": None, "prompt_template": None}
    args.update(kw)
    return open_manifest(path, **args)


# --- pure helpers ---------------------------------------------------------------------------------


def test_detect_format_by_extension() -> None:
    assert detect_format(Path("a.CSV")) == "csv"
    assert detect_format(Path("a.ndjson")) == "jsonl"
    assert detect_format(Path("a.pq")) == "parquet"
    with pytest.raises(ManifestError, match=r"input\.manifest: a\.xlsx has an unknown extension"):
        detect_format(Path("a.xlsx"))


def test_template_fields_plain_names_only() -> None:
    assert template_fields("Describe {title} by {author}; {{literal}} {title:>10}") == ["title", "author"]
    for bad in ("{}", "{0}", "{a.b}", "{a[0]}"):
        with pytest.raises(ValueError, match="plain column name"):
            template_fields(bad)
    with pytest.raises(ValueError):
        template_fields("unclosed {title")


def test_render_template_names_the_missing_field() -> None:
    names = ["title", "year"]
    assert render_template("{title} ({year})", names, {"title": "Cat", "year": 1999}, False) == "Cat (1999)"
    err = render_template("{title} ({year})", names, {"title": "Cat"}, False)
    assert isinstance(err, RowFailure) and err.error_type == "template_error"
    assert "{year} is missing" in err.message
    err = render_template("{title}", ["title"], {"title": ""}, True)
    assert isinstance(err, RowFailure) and "{title} is empty" in err.message
    assert render_template("{title}", ["title"], {"title": ""}, False) == ""
    err = render_template("{n:d}", ["n"], {"n": "x"}, False)
    assert isinstance(err, RowFailure) and "could not be filled" in err.message


def test_parse_images_forms() -> None:
    assert parse_images("a.jpg") == ["a.jpg"]
    assert parse_images(' ["a.jpg", "b.jpg"] ') == ["a.jpg", "b.jpg"]
    assert parse_images(["a.jpg", "http://x/b.png"]) == ["a.jpg", "http://x/b.png"]
    for bad in ("", "  ", None, [], ["a.jpg", ""], [1], 7, "[not json"):
        err = parse_images(bad)
        assert isinstance(err, RowFailure) and err.error_type == "bad_row", bad


def test_resolve_image_relative_to_manifest(tmp_path: Path) -> None:
    assert resolve_image("img/a.jpg", tmp_path) == str(tmp_path / "img/a.jpg")
    assert resolve_image("/abs/a.jpg", tmp_path) == "/abs/a.jpg"
    assert resolve_image("HTTPS://x/a.jpg", tmp_path) == "HTTPS://x/a.jpg"


def test_derive_id_depends_on_content_only() -> None:
    a = derive_id(["a.jpg"], "a.jpg", "Describe")
    assert a == derive_id(["a.jpg"], "other cell form", "Describe")
    assert a != derive_id(["a.jpg"], "a.jpg", "Describe it")
    assert a != derive_id(["b.jpg"], "b.jpg", "Describe")
    assert len(a) == 16 and custom_id_for(a) == a


# --- CSV ------------------------------------------------------------------------------------------


def test_csv_rows_with_bom_lists_and_template(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "m.csv",
        ["id", "image", "title"],
        [
            ["r1", "a.jpg", "Cat"],
            ["r2", '["b.jpg","https://x.test/c.png"]', "Dog"],
            ["r3", "", "Empty"],
            ["r4", "d.jpg", ""],
        ],
        bom=True,
    )
    m = _open(path, id_column="id", prompt_template="Describe {title}")
    m.check()
    assert m.columns == ["id", "image", "title"]
    assert m.field_types() == {"id": "string", "image": "string", "title": "string"}
    rows = list(m.rows())
    assert [r.id for r in rows] == ["r1", "r2", "r3", "r4"]
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert rows[0].images == [str(tmp_path / "a.jpg")] and rows[0].prompt == "Describe Cat"
    assert rows[0].fields == {"id": "r1", "image": "a.jpg", "title": "Cat"} and rows[0].error is None
    assert rows[1].images == [str(tmp_path / "b.jpg"), "https://x.test/c.png"]
    assert rows[2].error is not None and rows[2].error.error_type == "bad_row"
    assert rows[3].error is not None and rows[3].error.error_type == "template_error"
    assert "{title}" in rows[3].error.message


def test_csv_prompt_column_and_empty_prompt(tmp_path: Path) -> None:
    path = _csv(tmp_path / "m.csv", ["image", "prompt"], [["a.jpg", "What is it?"], ["b.jpg", " "]])
    rows = list(_open(path, prompt_column="prompt").rows())
    assert rows[0].prompt == "What is it?" and rows[0].error is None
    assert rows[1].error is not None and rows[1].error.error_type == "bad_row"


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (
            {"image_column": "img"},
            r"^input\.image_column: column 'img' is not in m\.csv \(columns: id, image, title\)$",
        ),
        ({"id_column": "key"}, r"^input\.id_column: column 'key' is not in m\.csv"),
        ({"prompt_column": "p"}, r"^input\.prompt_column: column 'p' is not in m\.csv"),
        (
            {"prompt_template": "Describe {author}"},
            r"^input\.prompt: template field \{author\} is not a column of m\.csv "
            r"\(columns: id, image, title\)$",
        ),
        ({"prompt_template": "Describe {a.b}"}, r"^input\.prompt: template field \{a\.b\} must be a plain"),
    ],
)
def test_csv_check_names_file_and_key(tmp_path: Path, kw: dict, match: str) -> None:
    path = _csv(tmp_path / "m.csv", ["id", "image", "title"], [["1", "a.jpg", "t"]])
    with pytest.raises(ManifestError, match=match):
        _open(path, **kw).check()


def test_check_missing_empty_and_repeated_header(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"input\.manifest: .*nope\.csv does not exist"):
        _open(tmp_path / "nope.csv").check()
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match=r"input\.manifest: empty\.csv is empty"):
        _open(tmp_path / "empty.csv").check()
    (tmp_path / "rep.csv").write_text("image,image\na,b\n")
    with pytest.raises(ManifestError, match="repeats column"):
        _open(tmp_path / "rep.csv").check()
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00bad header\n")
    with pytest.raises(ManifestError, match=r"cannot read the header of bin\.csv"):
        _open(tmp_path / "bin.csv").check()


def test_both_prompt_sources_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not both"):
        _open(tmp_path / "m.csv", prompt_column="p", prompt_template="x")


def test_derived_ids_stable_when_manifest_grows(tmp_path: Path) -> None:
    rows = [[f"img{i}.jpg", f"title {i}"] for i in range(50)]
    path = _csv(tmp_path / "m.csv", ["image", "title"], rows)
    m = _open(path, prompt_template="Describe {title}")
    before = [r.id for r in m.rows()]
    assert len(set(before)) == 50
    # Rows appended (and one inserted at the top): old rows keep their ids whatever their position.
    _csv(path, ["image", "title"], [["new.jpg", "new"], *rows, ["img99.jpg", "title 99"]])
    after = {r.id for r in m.rows()}
    assert set(before) <= after and len(after) == 52


def test_identical_rows_without_id_are_reported_as_duplicates(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "m.csv",
        ["image", "title"],
        [["a.jpg", "x"], ["b.jpg", "y"], ["a.jpg", "x"], ["c.jpg", "z"], ["a.jpg", "x"]],
    )
    rows = list(_open(path, prompt_template="{title}").rows())
    with JobState.open(tmp_path / "out") as state:
        report = state.sync_rows(rows)
    assert report.rows == 5 and report.duplicate_count == 1
    assert report.duplicates == [rows[0].id]


# --- JSONL ----------------------------------------------------------------------------------------


def test_jsonl_rows_lists_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [
        json.dumps({"id": 1, "image": ["a.jpg", "b.jpg"], "title": "Two", "n": 2}),
        "this is not json",
        json.dumps([1, 2, 3]),
        "",
        json.dumps({"id": "x y", "image": "c.jpg", "n": 3}),
        json.dumps({"id": "z", "image": 5, "title": "t"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    m = _open(path, id_column="id", prompt_template="About {title}")
    m.check()
    assert m.columns == ["id", "image", "title", "n"]
    rows = list(m.rows())
    assert len(rows) == 5
    assert rows[0].id == "1" and rows[0].images == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert rows[0].prompt == "About Two" and rows[0].fields["n"] == 2
    assert rows[1].error is not None and rows[1].error.error_type == "bad_row"
    assert "line 2 is not JSON" in rows[1].error.message
    assert rows[2].error is not None and "not an object" in rows[2].error.message
    assert rows[3].error is not None and rows[3].error.error_type == "template_error"
    assert rows[3].id == "x y" and rows[3].custom_id != "x y"
    assert rows[4].error is not None and rows[4].error.error_type == "bad_row"
    assert len({r.id for r in rows}) == 5


def test_jsonl_check_uses_first_object(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"picture": "a.jpg"}) + "\n")
    with pytest.raises(ManifestError, match=r"input\.image_column: column 'image' is not in m\.jsonl"):
        _open(path).check()
    (tmp_path / "none.jsonl").write_text("[1]\n")
    with pytest.raises(ManifestError, match="no JSON object"):
        _open(tmp_path / "none.jsonl").check()


# --- Parquet --------------------------------------------------------------------------------------


def test_parquet_rows_native_types_and_lists(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "key": pa.array([10, 11, 12], pa.int32()),
            "image": pa.array([["a.jpg"], ["b.jpg", "c.jpg"], []], pa.list_(pa.string())),
            "score": pa.array([0.5, None, 1.5]),
            "flag": pa.array([True, False, None]),
            "title": pa.array(["A", None, "C"]),
            "when": pa.array([1, 2, 3], pa.timestamp("s")),
        }
    )
    path = tmp_path / "m.parquet"
    pq.write_table(table, path, row_group_size=2)
    m = _open(path, id_column="key", prompt_template="Title {title}")
    m.check()
    assert m.field_types() == {
        "key": "int64",
        "image": "string",
        "score": "double",
        "flag": "bool",
        "title": "string",
        "when": "string",
    }
    rows = list(m.rows())
    assert [r.id for r in rows] == ["10", "11", "12"]
    assert rows[0].fields["score"] == 0.5 and rows[0].fields["flag"] is True and rows[0].error is None
    assert rows[0].fields["image"] == '["a.jpg"]' and rows[0].fields["when"].startswith("1970-01-01")
    assert rows[1].images == [str(tmp_path / "b.jpg"), str(tmp_path / "c.jpg")]
    assert rows[1].error is not None and rows[1].error.error_type == "template_error"
    assert rows[2].error is not None and rows[2].error.error_type == "bad_row"
    with pytest.raises(ManifestError, match=r"input\.image_column: column 'img' is not in m\.parquet"):
        _open(path, image_column="img").check()
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match=r"cannot read the schema of bad\.parquet"):
        _open(tmp_path / "bad.parquet").check()


# --- constant memory ------------------------------------------------------------------------------


def test_large_csv_streams_in_constant_memory(tmp_path: Path) -> None:
    n = 200_000
    path = tmp_path / "big.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "title"])
        writer.writerows([f"row{i}", f"images/{i:07d}.jpg", f"a title for image {i}"] for i in range(n))
    size = path.stat().st_size
    m = _open(path, id_column="id", prompt_template="Describe {title}")
    m.check()
    started = time.perf_counter()
    count, peak = count_rows_traced(m)
    assert count == n
    # Holding the rows would take hundreds of MB; streaming holds one row and the read buffer.
    assert peak < 1_000_000 < size, (peak, size)
    assert time.perf_counter() - started < 30  # a guard against runaway slowness, not a benchmark


def count_rows_traced(manifest: Manifest) -> tuple[int, int]:
    """The manifest's rows without an error, and the peak of Python allocations while reading them."""
    tracemalloc.start()
    try:
        count = sum(1 for row in manifest.rows() if row.error is None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak
