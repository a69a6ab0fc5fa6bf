"""Issue 13, defects 2 and 9 (CSV part): a CSV row whose cell count differs from the header's, a quote
left open at the end of the file, a byte that is not UTF-8: each named by its line, per row where the
reader can go on, for the whole manifest (exit 2, nothing sent) where it cannot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batcher.manifest import ManifestError, count_lines, open_manifest, utf8_problem
from batcher.records import Row
from batcher.sink import read_results
from tests.helpers import batcher, make_images, messages_sent, results_by_id
from tests.test_manifest import count_rows_traced


def _open(path: Path, **kw):  # type: ignore[no-untyped-def]
    args = {
        "id_column": "id",
        "image_column": "image",
        "prompt_column": None,
        "prompt_template": "Describe {title}",
    }
    args.update(kw)
    return open_manifest(path, **args)


def _rows(path: Path, **kw) -> list[Row]:  # type: ignore[no-untyped-def]
    m = _open(path, **kw)
    m.check()
    return list(m.rows())


def _errors(rows: list[Row]) -> dict[int, str]:
    return {r.index: r.error.message for r in rows if r.error is not None}


# --- pure helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n"), [("", 0), ("a", 1), ("a\n", 1), ("a\r\nb", 2), ("a\rb\r", 2), ("\n\n", 2), ("a\n\rb", 3)]
)
def test_count_lines_counts_as_the_reader_splits(text: str, n: int) -> None:
    import io

    assert count_lines(text) == n == len(list(io.StringIO(text, newline="")))


def test_utf8_problem_names_line_column_and_byte() -> None:
    line = "r1,caf\xe9,x".encode("latin-1").decode("utf-8", "surrogateescape")
    assert utf8_problem(line, 7) == ("line 7, column 7: byte 0xE9 is not UTF-8 (save the manifest as UTF-8)")
    assert utf8_problem("r1,café,x", 7) is None


# --- cell counts ----------------------------------------------------------------------------------


def test_a_row_with_more_or_fewer_cells_is_an_error_on_that_row_only(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "id,image,title\n"  # line 1
        "r1,a.jpg,Cat\n"  # 2
        "r2,b.jpg,Dog, with a comma\n"  # 3: an unquoted extra comma
        "\n"  # 4: blank, skipped
        "r3,c.jpg\n"  # 5: a cell short
        'r4,d.jpg,"two\nlines, quoted"\n'  # 6-7: a legitimate multi-line cell
        "r5,e.jpg,Cow\n"
    )  # 8
    rows = _rows(path)
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]
    assert _errors(rows) == {
        1: "line 3 has 4 cells where the header has 3",
        2: "line 5 has 2 cells where the header has 3",
    }
    assert all(rows[i].error.error_type == "bad_row" for i in (1, 2))  # type: ignore[union-attr]
    assert rows[0].prompt == "Describe Cat" and rows[4].prompt == "Describe Cow"
    assert rows[3].prompt == "Describe two\nlines, quoted" and rows[3].id == "r4"
    # a bad row's id is stable, and no row's cells were dropped or padded into a prompt
    assert [r.id for r in _rows(path)] == [r.id for r in rows]
    assert len({r.id for r in rows}) == 5


def test_a_stray_quote_closed_later_makes_one_bad_row_naming_where_it_ran(tmp_path: Path) -> None:
    # the quote opened on line 2 is closed by the one that opens "Cow" on line 4: the csv module's
    # default would make lines 2-4 one row of three cells, the middle rows swallowed without a word
    path = tmp_path / "m.csv"
    path.write_text(
        'id,image,title\nr1,a.jpg,"Cat\nr2,b.jpg,Dog\nr3,c.jpg,"Cow"\nr4,d.jpg,Ox\n'
        'r5,"e.jpg" ,Ox\nr6,f.jpg,"a ""quoted"" word, and a comma"\n'
    )
    rows = _rows(path)
    after = (
        "a quoted cell goes on after its closing quote (',' expected after '\"'; a quote inside one "
        'is written "")'
    )
    assert _errors(rows) == {
        0: f"line 2 (a row running on to line 4: is a quote left open?): {after}",
        2: f"line 6: {after}",
    }
    assert [r.id for r in rows if r.error is None] == ["r4", "r6"]
    assert rows[3].prompt == 'Describe a "quoted" word, and a comma'


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('id,image,title\nr1,a.jpg,Cat\nr2,b.jpg,"Dog\nr3,c.jpg,Cow\nr4,d.jpg,Ox\n', 3),
        ('id,image,title\nr1,a.jpg,Cat\nr2,b.jpg,"Dog', 3),  # no newline at the end
        ('id,image,title\nr1,a.jpg,Cat\nr2,"b\n.jpg","Dog\nr3,c.jpg,Cow\n', 4),  # after a good 2-line cell
        ('id,image,title\r\nr1,a.jpg,Cat\r\nr2,b.jpg,"\r\n', 3),
    ],
)
def test_a_quote_open_at_the_end_is_a_manifest_error_naming_its_line(
    tmp_path: Path, text: str, line: int
) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text, newline="")
    m = _open(path)
    m.check()  # the header is fine
    with pytest.raises(
        ManifestError,
        match=rf"^input\.manifest: m\.csv line {line}: a quote opened on "
        "this line is never closed",
    ):
        list(m.rows())


def test_a_cell_past_the_size_limit_is_a_manifest_error(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import csv

    import batcher.manifest as manifest

    old = csv.field_size_limit()
    monkeypatch.setattr(manifest, "_CSV_FIELD_LIMIT", 1000)
    path = tmp_path / "m.csv"
    path.write_text('id,image,title\nr1,a.jpg,"Cat\n' + "r,b.jpg,Dog\n" * 200 + 'r9,z.jpg,"Ox"\n')
    try:
        csv.field_size_limit(1000)
        with pytest.raises(ManifestError, match=r"m\.csv line 2: a cell runs on for more than"):
            list(_open(path).rows())
    finally:
        csv.field_size_limit(old)


# --- bytes that are not UTF-8 ---------------------------------------------------------------------


def _latin1_manifest(path: Path, n: int, bad: set[int]) -> None:
    lines = ["id,image,title"] + [
        f"r{i},img{i % 3}.jpg,{'Caf' + chr(0xE9) if i in bad else 'Cafe'} {i}" for i in range(n)
    ]
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")


def test_a_byte_that_is_not_utf8_fails_its_row_naming_line_and_byte(tmp_path: Path) -> None:
    # rows 2 (within the first kilobytes: once "cannot read the header") and 2500 (past the first
    # blocks: once a traceback after thousands of rows)
    path = tmp_path / "m.csv"
    _latin1_manifest(path, 3000, {2, 2500})
    rows = _rows(path)
    assert len(rows) == 3000
    problem = "byte 0xE9 is not UTF-8 (save the manifest as UTF-8)"
    assert _errors(rows) == {2: f"line 4, column 16: {problem}", 2500: f"line 2502, column 19: {problem}"}
    assert rows[3].prompt == "Describe Cafe 3" and rows[2999].id == "r2999"


def test_a_header_that_is_not_utf8_names_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes("id,image,tître\nr1,a.jpg,x\n".encode("latin-1"))
    with pytest.raises(
        ManifestError,
        match=r"cannot read the header of m\.csv: line 1, column 11: "
        r"byte 0xEE is not UTF-8",
    ):
        _open(path).check()
    (tmp_path / "u16.csv").write_bytes("id,image\nr1,a.jpg\n".encode("utf-16"))
    with pytest.raises(ManifestError, match=r"byte 0xFF is not UTF-8 .*\(it looks like UTF-16\)"):
        _open(tmp_path / "u16.csv").check()


def test_line_numbers_hold_with_crlf_a_bom_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(
        b"\xef\xbb\xbfid,image,title\r\n\r\nr1,a.jpg,Cat\r\nr2,b.jpg\r\n\r\n"
        b'r3,"c.jpg","x\r\ny"\r\nr4,d.jpg,D\xe9\r\nr5,e.jpg,E\r\n'
    )
    rows = _rows(path)
    assert [r.id for r in rows if r.error is None] == ["r1", "r3", "r5"]
    assert _errors(rows) == {
        1: "line 4 has 2 cells where the header has 3",
        3: "line 8, column 11: byte 0xE9 is not UTF-8 (save the manifest as UTF-8)",
    }


# --- end to end -----------------------------------------------------------------------------------

CSV_JOB = """
[input]
manifest = "manifest.csv"
id_column = "id"
image_column = "image"
prompt = "Say what you see. nonce={id}:{title}"

[request]
model = "claude-haiku-5-5"
max_tokens = 60

[run]
output = "out"
concurrency = 4
"""


def _csv_job(tmp: Path, body: bytes) -> Path:
    (tmp / "manifest.csv").write_bytes(body)
    job = tmp / "job.toml"
    job.write_text(CSV_JOB)
    return job


def _estimate(job: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", "estimate", str(job), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_run_bad_rows_are_named_and_the_rest_answered(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    names = make_images(tmp_path / "images", 3)
    good = [f"g{i},{names[i % 3]},plain{i}" for i in range(6)]
    body = (
        "\n".join(
            [
                "id,image,title",
                good[0],
                good[1],
                f"extra,{names[0]},a title, with a comma",  # line 4
                good[2],
                f"short,{names[1]}",  # line 6
                good[3],
                f"latin,{names[2]},Caf\xe9",  # line 8
                good[4],
                good[5],
            ]
        )
        + "\n"
    )
    job = _csv_job(tmp_path, body.encode("latin-1"))

    est = _estimate(job)
    assert est.returncode == 0, est.stderr
    assert json.loads(est.stdout)["failures"] == {"bad_row": 3}

    done = batcher(job, simulator)
    assert done.returncode == 3, done.stderr
    assert messages_sent(simulator) == 6
    results = results_by_id(tmp_path / "out")
    answered = {r["id"] for r in results.values() if r["status"] == "ok"}
    assert answered == {f"g{i}" for i in range(6)}
    for r in results.values():
        if r["status"] == "ok":
            assert f"nonce={r['id']}:plain{r['id'][1:]}" in r["text"]
    errors = sorted(r["error_message"] for r in results.values() if r["status"] == "error")
    assert errors == [
        "line 4 has 4 cells where the header has 3",
        "line 6 has 2 cells where the header has 3",
        f"line 8, column {len(f'latin,{names[2]},Caf') + 1}: byte 0xE9 is not UTF-8 "
        "(save the manifest as UTF-8)",
    ]
    assert {r["error_type"] for r in results.values() if r["status"] == "error"} == {"bad_row"}
    assert len(read_results(tmp_path / "out")) == 9


def test_run_with_a_quote_open_at_the_end_refuses_and_sends_nothing(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    names = make_images(tmp_path / "images", 2)
    body = (
        "\n".join(
            [
                "id,image,title",
                f"a,{names[0]},fine",
                f'b,{names[1]},"a quote that never closes',
                f"c,{names[0]},swallowed",
                f"d,{names[1]},swallowed too",
            ]
        )
        + "\n"
    )
    job = _csv_job(tmp_path, body.encode())
    done = batcher(job, simulator)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "manifest.csv line 3: a quote opened on this line is never closed" in lines[0]
    assert str(job) in lines[0]
    assert messages_sent(simulator) == 0
    assert not (tmp_path / "out" / "results").exists() or not read_results(tmp_path / "out")

    est = _estimate(job)
    assert est.returncode == 2 and "manifest.csv line 3: a quote opened" in est.stderr


# --- Arrow reads a quote-free CSV; the csv module reads the rest: the same rows ---------------------


@pytest.mark.parametrize(
    "trouble",
    [
        None,
        b"r-x,b.jpg,one,cell too many",
        b"r-x,b.jpg,caf\xe9",
        b"  ",
        b"r-x,b.jpg,nul\x00",
        b'r-x,"b.jpg","quoted, with ""quotes"" and a\nline break"',  # fine: Arrow reads it too
        b'r-x,"b.jpg"z,quoted then more',
        b'r-x,b.jpg,"a stray quote\nr-y,c.jpg,"x"',
        b'""',
    ],
)
def test_rows_read_by_arrow_are_the_rows_the_csv_module_reads(
    tmp_path: Path,
    monkeypatch,  # type: ignore[no-untyped-def]
    trouble: bytes | None,
) -> None:
    import batcher.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "_ARROW_CSV_BLOCK", 8 * 1024)  # many chunks before the line
    monkeypatch.setattr(manifest_module, "_ARROW_ROWS_MIN_BYTES", 0)
    lines = [b"id,image,title"] + [
        f"r{i},{'ab'[i % 2]}.jpg,t\xeftle {i}{' ' if i % 3 else ''}".encode() for i in range(3000)
    ]
    lines[700:700] = [b"", b"r-e,,", b"r-f,c.jpg,", b"\r"]
    if trouble is not None:
        lines.insert(2500, trouble)
    path = tmp_path / "m.csv"
    path.write_bytes(b"\r\n".join(lines) + b"\n")
    m = _open(path)
    m.check()
    by_arrow = list(m.rows())
    monkeypatch.setattr(manifest_module, "_arrow_quoting", lambda _path: None)
    by_csv = list(m.rows())
    assert by_arrow == by_csv
    assert 3002 <= len(by_csv) <= 3003


def test_rows_read_by_arrow_stream_in_constant_memory(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]

    import batcher.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "_ARROW_ROWS_MIN_BYTES", 0)
    path = tmp_path / "big.csv"
    with path.open("w") as fh:
        fh.write("id,image,title\n")
        fh.writelines(f"row{i},images/{i:07d}.jpg,a title for image {i}\n" for i in range(200_000))
    m = _open(path)
    m.check()
    assert sum(1 for _ in zip(range(10), m.rows(), strict=False)) == 10  # pyarrow imported, outside the count
    arrow_chunks = spy_arrow_chunks(monkeypatch)
    count, peak = count_rows_traced(m)
    assert count == 200_000 == sum(arrow_chunks)
    assert peak < 1_000_000 < path.stat().st_size, peak


@pytest.mark.parametrize(
    ("text", "arrow"),
    [
        ("id,image\nr1,a.jpg\n", False),
        ('id,image\n"r1",a.jpg\nr2,"b ""x"" y"\n', True),
        ('\ufeff"id",image\nr1,"a\r\nb"\n', True),
        ('id,image\nr1,a "mid-cell" quote\n', False),  # a character, to both
        ('id,image\nr1,"a.jpg"b\n', None),  # strict refuses what follows a closing quote
        ('id,image\nr1,"a.jpg\n', None),  # open at the end
        ('"id\n",image\nr1,a.jpg\n', None),  # a header over two lines
        ("id,image\nr1,a\x00.jpg\n", None),
    ],
)
def test_arrow_reads_a_csv_only_where_it_reads_as_the_strict_csv_module(
    tmp_path: Path, text: str, arrow: bool | None
) -> None:
    from batcher.manifest import _arrow_quoting

    path = tmp_path / "m.csv"
    path.write_text(text, newline="")
    assert _arrow_quoting(path) is arrow


def test_the_quote_scan_follows_cells_across_its_blocks(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import batcher.manifest as manifest_module
    from batcher.manifest import _arrow_quoting

    monkeypatch.setattr(manifest_module, "_CSV_SCAN_BLOCK", 7)
    path = tmp_path / "m.csv"
    path.write_text('id,image\nr1,"a ""b"" c\nd"\nr2,"e,f"\n"r3",x""y\n')
    assert _arrow_quoting(path) is True
    path.write_text('id,image\nr1,"a ""b"" c\nd"\nr2,"e,f"q\n')
    assert _arrow_quoting(path) is None
    path.write_text('id,image\nr1,"a ""b""')  # open at the end, after a "" pair
    assert _arrow_quoting(path) is None


def spy_arrow_chunks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of the chunks Arrow's CSV reader hands over from now on (empty: Arrow unused)."""
    import batcher.manifest as manifest_module

    lengths: list[int] = []
    real = manifest_module._arrow_csv_chunks

    def spy(*args, **kw):  # type: ignore[no-untyped-def]
        for chunk in real(*args, **kw):
            lengths.append(chunk.length)
            yield chunk

    monkeypatch.setattr(manifest_module, "_arrow_csv_chunks", spy)
    return lengths
