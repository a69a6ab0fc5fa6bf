"""Manifests: CSV, JSONL or Parquet, streamed as :class:`~batcher.records.Row` in constant memory.

The format comes from the extension (``.csv``; ``.jsonl``/``.ndjson``; ``.parquet``/``.pq``).
:meth:`Manifest.check` finds the errors that would make every row fail (missing file, unreadable
header, a missing column, a template field that is no column) and raises :class:`ManifestError`,
whose message names the file and the job key. Anything wrong with a single row (no image, an image
cell that is not a path/URL/list of them, a template field empty in that row, a JSONL line that is
not an object, a CSV line with too many or too few cells or with bytes that are not UTF-8) is *not*
fatal: the row comes out with ``Row.error`` set, its message naming the line.

CSV: RFC 4180, read by Python's :mod:`csv` in strict mode (``,`` between cells; ``"`` around a cell
that holds commas, quotes written ``""`` or line breaks; a quoted cell ends at a comma or a line end).
A row's line is the physical line where it starts. A row whose cell count differs from the header's,
or whose quoted cell goes on after its closing quote, is a ``bad_row`` naming its line (never padded
or cut), and reading goes on at the next line. A quote still open at the end of the file, or a cell
running on past 16 MB, is a :class:`ManifestError` naming the line where it opened: the rows after it
cannot be told apart, so nothing is sent. Blank lines are skipped; a UTF-8 BOM is allowed.

Ids: with ``id_column`` the cell's value (as a string). Without it, a stable id derived from the row's
content: the first 16 hex digits of a SHA-256 over the image value(s) as written in the manifest and
the prompt. It does not depend on the row's position, so a manifest that grows keeps old rows'
ids. Two identical rows (same images, same prompt) therefore get the same id and are reported as
duplicates by the job state; give the manifest an id column if that is legitimate.

Images: a cell holds one path, http(s) URL or object store URI (``s3://``...), or a list of them (a
JSON list string such as ``["a.jpg","b.jpg"]`` in CSV, a real list in JSONL/Parquet). Paths are
resolved against the manifest's folder, in its bucket for a manifest that lives in one.

A manifest in a bucket (``s3://bucket/data/manifest.csv``: :class:`batcher.stores.ObjectPath`) is
streamed through the store's file: CSV by the csv module (no Arrow pre-scan, which would read it
twice), JSONL by lines, Parquet by row groups.

Templates: ``prompt = "Describe {title}"`` uses :meth:`str.format` fields over the row's columns
(``{{``/``}}`` for literal braces; only plain ``{column}`` names, optionally with a format spec).
A field that is missing, null, NaN, or an empty CSV cell in a row gives that row a ``template_error``.

Field types (for the Parquet sink's schema, :meth:`Manifest.field_types`): CSV columns are strings;
Parquet columns keep integer/float/bool/string types (anything else is stored as its string form);
JSONL has no schema, so its columns are strings (non-string values as JSON text). A non-finite
number (NaN, +-inf, in Parquet or as JSONL's ``NaN``/``Infinity``) is null in ``Row.fields``: JSON
has no such numbers, and null keeps a float column's type.

Speed: a CSV with no quote in it is read by Arrow's CSV reader (every cell as text, so its UTF-8 is
checked), which reads such a file exactly as the csv module does; at the first row where the two
could differ (a cell count unlike the header's, a byte that is not UTF-8) the csv module takes over
from that row, over blocks decoded at once. Parquet comes in Arrow record batches, JSONL through
orjson. What a row's image cell resolves to is computed once per distinct cell. Only a few hundred
rows are Python objects at a time. :meth:`Manifest.arrow_chunks` hands CSV and Parquet to
``batcher estimate`` as Arrow arrays, so it works per distinct image and on whole columns.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import posixpath
import re
import string
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _json_string
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast

from batcher.errors import JobError, RowFailure
from batcher.exits import EXIT_CONFIG
from batcher.records import Row
from batcher.stores import ObjectPath
from batcher.urls import is_object, scheme_of

if TYPE_CHECKING:
    from _csv import Reader as CsvReader

    import pyarrow as pa

    from batcher.config import JobConfig

Format = Literal["csv", "jsonl", "parquet"]
#: Where a manifest is: a local file, or an object in a bucket (read through :mod:`batcher.stores`).
ManifestPath = Path | ObjectPath
#: Sink column types a manifest column can have.
FieldType = Literal["string", "int64", "double", "bool"]

EXTENSIONS: dict[str, Format] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
DERIVED_ID_HEX = 16
#: Rows of a Parquet record batch read at a time by ``rows()`` (as Python objects).
_PARQUET_BATCH_ROWS = 4096
#: Rows of an :class:`ArrowChunk` built from the csv module's rows (more would only make the garbage
#: collector walk them longer).
_PYTHON_CHUNK_ROWS = 8192
#: Rows of an :class:`ArrowChunk` read from a Parquet file.
ARROW_CHUNK_ROWS = 65536
#: Bytes Arrow's CSV reader parses at a time (a block per thread), for the estimate: its speed.
_ARROW_CSV_BLOCK = 1024 * 1024
#: The same for ``rows()``, which a run reads twice at once (the sync and the resume pass, in two
#: processes): Arrow's resident memory grows some 100 MB per reader with 1 MiB blocks, 40 with these.
_ARROW_ROWS_BLOCK = 256 * 1024
_CSV_SCAN_BLOCK = 64 * 1024
#: Rows of an Arrow chunk turned into Python objects at a time by ``rows()`` (constant memory).
_ROWS_SLICE = 512
#: A CSV this size or more is read by Arrow for ``rows()`` where it can be (see csv_records).
_ARROW_ROWS_MIN_BYTES = 32 * 1024 * 1024
# CSV cells hold whole prompts; the csv module's default 128 KiB cap is too low for some.
_CSV_FIELD_LIMIT = 16 * 1024 * 1024
#: Bytes of a CSV decoded at once (cut after a line end, so no character is ever split).
_CSV_BLOCK = 64 * 1024
#: A CSV line longer than this (no line end in sight) is refused rather than held in memory.
_CSV_MAX_LINE = 4 * _CSV_FIELD_LIMIT
#: The rest of a quoted CSV cell after its opening quote, to its closing one (``""`` is a quote in it).
_QUOTED_CELL = re.compile(rb'[^"]*(?:""[^"]*)*"')
#: A byte that is not UTF-8, as ``surrogateescape`` decodes it.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
#: Distinct image cells whose parse ``rows()`` remembers (a manifest over a few hundred images, or
#: whose rows come grouped by image, hits it; one over millions of distinct images clears it now and
#: then). Small: ``rows()`` streams in well under a megabyte.
_IMAGE_CACHE_SIZE = 512


class ManifestError(JobError, ValueError):
    """The manifest cannot be used at all; the message names the file and the job key."""

    exit_code = EXIT_CONFIG


# --- pure helpers -------------------------------------------------------------------------------


def detect_format(path: ManifestPath) -> Format:
    """The manifest format, from the file's extension."""
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(EXTENSIONS))
        raise ManifestError(f"input.manifest: {path.name} has an unknown extension (expected one of {known})")
    return fmt


def template_fields(template: str) -> list[str]:
    """The column names a prompt template uses, in order of first use.

    Raises ValueError for a malformed template or a field that is not a plain name
    (``{a.b}``, ``{a[0]}``, ``{}``, ``{0}``): fields name manifest columns, nothing else.
    """
    names: list[str] = []
    for _literal, name, spec, _conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name or name.isdigit() or any(c in name for c in ".[]"):
            raise ValueError(f"template field {{{name}}} must be a plain column name")
        if spec and "{" in spec:
            raise ValueError(f"template field {{{name}}} has a nested field in its format spec")
        if name not in names:
            names.append(name)
    return names


def render_template(
    template: str, names: list[str], values: dict[str, Any], empty_is_missing: bool
) -> str | RowFailure:
    """The prompt for one row, or the row error naming the first missing field."""
    for name in names:
        value = values.get(name)
        if (
            value is None
            or (empty_is_missing and value == "")
            or (isinstance(value, float) and math.isnan(value))
        ):
            state = "empty" if name in values else "missing"
            return RowFailure("template_error", f"template field {{{name}}} is {state} in this row")
    try:
        return template.format_map(values)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        return RowFailure("template_error", f"template could not be filled: {exc}")


def parse_images(cell: Any) -> list[str] | RowFailure:
    """The image value(s) of one cell, as written: a path/URL, or a list of them."""
    if isinstance(cell, str):
        text = cell.strip()
        if text.startswith("["):
            try:
                cell = json.loads(text)
            except json.JSONDecodeError as exc:
                return RowFailure("bad_row", f"image cell looks like a JSON list but is not one: {exc.msg}")
        elif not text:
            return RowFailure("bad_row", "image cell is empty")
        else:
            return [text]
    if cell is None:
        return RowFailure("bad_row", "image cell is empty")
    if isinstance(cell, list | tuple):
        if not cell:
            return RowFailure("bad_row", "image list is empty")
        out: list[str] = []
        for item in cell:
            if not isinstance(item, str) or not item.strip():
                return RowFailure("bad_row", f"image list holds {item!r}, not a path or URL")
            out.append(item.strip())
        return out
    return RowFailure("bad_row", f"image cell holds {type(cell).__name__} {cell!r}, not a path or URL")


def resolve_image(value: str, base: str | Path) -> str:
    """A ``scheme://`` source as given (a URL, an object store URI, or a scheme the run refuses by
    name); a path resolved against the manifest's folder. A manifest in a bucket (``base`` is
    ``s3://bucket/data``) resolves a relative path to an object in that folder there; an absolute
    path is a local file."""
    if scheme_of(value) is not None:
        return value
    if isinstance(base, str) and "://" in base and not value.startswith(("/", "~")):
        return object_join(base, value)
    # os.path, not pathlib: this runs once per image of every row.
    if value.startswith("~"):
        value = os.path.expanduser(value)
    return value if os.path.isabs(value) else os.path.join(base, value)


def object_join(folder: str, relative: str) -> str:
    """``relative`` (``a/b.jpg``, ``./b.jpg``, ``../c/d.jpg``) in an object store's ``folder``
    (``s3://bucket/data``): never above the bucket."""
    scheme, _, rest = folder.partition("://")
    bucket, _, prefix = rest.partition("/")
    key = posixpath.normpath(posixpath.join("/", prefix, relative)).lstrip("/")
    return f"{scheme}://{bucket}/{key}"


def derive_id(images: list[str] | None, image_cell: Any, prompt_key: str) -> str:
    """A stable id from the row's content: the image value(s) as written and the prompt."""
    raw = images if images is not None else image_cell
    if type(raw) is list and type(prompt_key) is str and all(type(v) is str for v in raw):
        # What the json.dumps below writes for a list of strings, without building an encoder per row
        # (most of a derived id's cost); tests hold the two to the same text.
        payload = "[[" + ", ".join(map(_json_string, raw)) + "], " + _json_string(prompt_key) + "]"
    else:
        payload = json.dumps([raw, prompt_key], ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:DERIVED_ID_HEX]


def to_scalar(value: Any) -> Any:
    """A JSON-able scalar for a manifest cell (lists, dates, bytes... become text; NaN and +-inf null).

    JSON has no non-finite numbers (Python writes ``NaN``, which SQLite's JSON functions refuse), and
    null keeps a float column a float column in the results.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    iso = getattr(value, "isoformat", None)
    return iso() if callable(iso) else str(value)


def count_lines(text: str) -> int:
    """How many lines :class:`io.StringIO` (``newline=""``) splits ``text`` into (``\\n``, ``\\r\\n``
    and ``\\r`` each end one)."""
    if not text:
        return 0
    ends = text.count("\n") + text.count("\r") - text.count("\r\n")
    return ends if text.endswith(("\n", "\r")) else ends + 1


def utf8_problem(line: str, line_no: int) -> str | None:
    """What is wrong with a line decoded with ``surrogateescape``: the first byte that is not UTF-8,
    by line, column (in bytes) and value; None for a clean line."""
    found = _NOT_UTF8.search(line)
    if found is None:
        return None
    column = len(line[: found.start()].encode("utf-8", "surrogateescape")) + 1
    byte = ord(found.group()) - 0xDC00
    return f"line {line_no}, column {column}: byte 0x{byte:02X} is not UTF-8 (save the manifest as UTF-8)"


# --- CSV reading ----------------------------------------------------------------------------------


class _CsvLines:
    """A CSV file's lines for :func:`csv.reader`, decoded a block at a time (not line by line).

    Bytes that are not UTF-8 decode as lone surrogates (``surrogateescape``) so the parse goes on;
    each line holding one is queued in ``bad`` as (line number, message), in line order, for the row
    it belongs to. ``exhausted`` turns true when the reader asks past the end of the file: a record it
    returns after that was still inside a quoted cell when the file ended.
    """

    def __init__(self, fh: BinaryIO, name: str) -> None:
        from collections import deque

        self._fh = fh
        self._name = name
        self.bad: deque[tuple[int, str]] = deque()
        self.exhausted = False

    def __iter__(self) -> Iterator[str]:
        lines = 0
        rest = b""
        first = True
        while True:
            block = self._fh.read(_CSV_BLOCK)
            if block:
                data = rest + block
                # Cut after the last line end; a \r only where the next byte is known (it may be \r\n).
                cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
                if not cut:
                    if len(data) > _CSV_MAX_LINE:
                        raise ManifestError(
                            f"input.manifest: {self._name} line {lines + 1} runs on for "
                            f"{_CSV_MAX_LINE // 2**20} MB without a line end: is it a CSV?"
                        )
                    rest = data
                    continue
                data, rest = data[:cut], data[cut:]
            elif rest:
                data, rest = rest, b""
            else:
                self.exhausted = True
                return
            text = data.decode("utf-8", "surrogateescape")
            if first:
                first = False
                text = text.removeprefix("\ufeff")
            if _NOT_UTF8.search(text) is not None:
                self._note_bad(text, lines)
            lines += count_lines(text)
            yield from io.StringIO(text, newline="")

    def _note_bad(self, text: str, before: int) -> None:
        for n, line in enumerate(io.StringIO(text, newline=""), start=before + 1):
            problem = utf8_problem(line, n)
            if problem is not None:
                self.bad.append((n, problem))

    def take_bad(self, first: int, last: int) -> str | None:
        """Forget the bad lines up to ``last``; the first one from line ``first`` on, if any."""
        found = None
        while self.bad and self.bad[0][0] <= last:
            n, problem = self.bad.popleft()
            if found is None and n >= first:
                found = problem
        return found


def _csv_reader(path: ManifestPath, fh: BinaryIO) -> tuple[CsvReader, _CsvLines, list[str] | None]:
    """A csv reader past the header, its lines, and the header's cells (None: an empty file).

    Strict: a quoted cell must end at a comma or a line end, and a quote open at the end of the file
    is an error (the csv module's default takes both silently, the rest of the file into one cell).
    """
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    name = path.name
    lines = _CsvLines(fh, name)
    reader = csv.reader(lines, strict=True)
    failed: csv.Error | None = None
    try:
        header = next(reader, None)
    except csv.Error as exc:
        header, failed = None, exc
    problem = lines.take_bad(1, reader.line_num)
    if problem is not None:
        utf16 = " (it looks like UTF-16)" if problem.startswith("line 1, column 1: byte 0xFF") else ""
        raise ManifestError(f"input.manifest: cannot read the header of {name}: {problem}{utf16}")
    if failed is not None:
        if lines.exhausted:
            raise ManifestError(_open_quote(path, 1))
        raise ManifestError(f"input.manifest: cannot read the header of {name}: line 1: {failed}")
    return reader, lines, header


def _open_quote(path: ManifestPath, first: int) -> str:
    """The message for a quote still open at the end of the file, in the row starting on line ``first``.

    Rare, so the row is read again without ``strict``: its last cell runs to the end of the file, and
    the line breaks in it say on which line it (and its quote) began.
    """
    opened = first
    with path.open("rb") as fh:
        lines = iter(_CsvLines(fh, path.name))
        for _ in range(first - 1):
            next(lines)
        reader = csv.reader(lines)
        try:
            cells = next(reader)
            last = first - 1 + reader.line_num
            opened = last - max(1, count_lines(cells[-1] if cells else "")) + 1
        except (csv.Error, StopIteration):
            pass  # past the size limit: the row's first line it is
    return (
        f"input.manifest: {path.name} line {opened}: a quote opened on this line is never closed, so "
        "every line after it would be read as one cell (close it, or write a quote inside a quoted "
        'cell as "")'
    )


def _span(first: int, last: int) -> str:
    return (
        f"line {first}"
        if first == last
        else f"line {first} (a row running on to line {last}: is a quote left open?)"
    )


def _csv_problem(path: ManifestPath, exc: csv.Error, first: int, last: int, lines: _CsvLines) -> RowFailure:
    """The error of a record the csv module refused; it reads on from the next line."""
    problem = lines.take_bad(first, last)
    if problem is not None:
        return RowFailure("bad_row", problem)
    if lines.exhausted:
        raise ManifestError(_open_quote(path, first))
    text = str(exc)
    if text.startswith("field larger than field limit"):
        # Almost always a quote left open: the rows after it cannot be told apart.
        raise ManifestError(
            f"input.manifest: {path.name} line {first}: a cell runs on for more than "
            f"{_CSV_FIELD_LIMIT // 2**20} MB (to line {last}): is a quote left open there?"
        )
    if text.endswith("expected after '\"'"):
        text = f'a quoted cell goes on after its closing quote ({text}; a quote inside one is written "")'
    return RowFailure("bad_row", f"{_span(first, last)}: {text}")


def _csv_row(
    cells: list[str], first: int, last: int, width: int, lines: _CsvLines
) -> list[str] | RowFailure | None:
    """A record's row, its error, or None for a blank line (the slow path: most rows never get here)."""
    problem = lines.take_bad(first, last) if lines.bad else None
    if problem is not None:
        return RowFailure("bad_row", problem)
    if not cells or (len(cells) == 1 and not cells[0].strip()):
        return None
    if len(cells) != width:
        return RowFailure(
            "bad_row", f"{_span(first, last)} has {len(cells)} cells where the header has {width}"
        )
    return cells


def csv_rows(path: ManifestPath, width: int) -> Iterator[list[str] | RowFailure]:
    """A CSV manifest's rows after the header, streamed: each its cells, or its error.

    Raises :class:`ManifestError` for what no row can be blamed for: a quote open at the end of the
    file, a cell over the size limit.
    """
    with path.open("rb") as fh:
        reader, lines, _header = _csv_reader(path, fh)
        after = reader.line_num  # the last line of the record before
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                first, after = after + 1, reader.line_num
                yield _csv_problem(path, exc, first, after, lines)
                continue
            first, after = after + 1, reader.line_num
            if len(cells) == width > 1 and not lines.bad:
                yield cells  # the fast path: almost every row
            else:
                row = _csv_row(cells, first, after, width, lines)
                if row is not None:
                    yield row


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of ``size`` items (the last one shorter)."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _NotTheSame(Exception):
    """Arrow's CSV reader met a row it would read otherwise than :func:`csv_rows` (or not at all)."""


def _arrow_quoting(path: ManifestPath) -> bool | None:
    """Whether Arrow's CSV reader reads the file exactly as the strict csv module does, by a scan at
    about the speed of the disk (Python steps only at quotes): False if it holds no quote at all,
    True if every quoted cell closes, and is followed by a comma or a line end (what strict asks),
    None if not so, or if the file holds a NUL byte or its header runs over more than one line.
    None for a manifest in a bucket: the scan would read it a second time over the network."""
    if isinstance(path, ObjectPath):
        return None
    with path.open("rb") as fh:
        _reader, _lines, _header = _csv_reader(path, fh)
        if _reader.line_num != 1:
            return None
    quoted = False
    with path.open("rb") as fh:

        def more() -> bytes | None:
            block = fh.read(_CSV_SCAN_BLOCK)
            if b"\0" in block:
                raise _NotTheSame
            return block

        try:
            # A line end before the file: a quote opens a cell after a comma, after a line end, or first.
            data, pos = b"\n" + (more() or b"").removeprefix(b"\xef\xbb\xbf"), 1
            while True:
                at = data.find(b'"', pos)
                if at < 0:
                    if not (block := more()):
                        return quoted
                    data, pos = data[-1:] + block, 1  # the last byte: what the next quote follows
                    continue
                if data[at - 1] not in b",\r\n":
                    pos = at + 1  # a quote inside an unquoted cell: just a character
                    continue
                quoted = True
                cell = _QUOTED_CELL.match(data, at + 1)
                # Not closed in what is read: no closing quote, or one the match had to take as closing
                # although a quote follows it (a "" pair), or the last byte (a "" pair's first half?).
                if cell is None or data[cell.end() : cell.end() + 1] in (b"", b'"'):
                    if not (block := more()):
                        return quoted if cell is not None and cell.end() == len(data) else None
                    if len(data) - at > _CSV_FIELD_LIMIT:
                        return None
                    data, pos = data[at - 1 :] + block, 1
                    continue
                if data[cell.end() : cell.end() + 1] not in (b",", b"\r", b"\n"):
                    return None  # something after the closing quote: strict refuses the row
                pos = cell.end()
        except _NotTheSame:
            return None


def _arrow_csv_chunks(
    path: ManifestPath, columns: list[str], wanted: list[str], quoted: bool, *, block: int = _ARROW_CSV_BLOCK
) -> Iterator[ArrowChunk]:
    """A CSV that :func:`_arrow_quoting` passed, read by Arrow, every column as text (so every cell's
    UTF-8 is checked); stops, having yielded only rows read exactly as :func:`csv_rows` reads them, at
    the first row it cannot vouch for: a cell count unlike the header's (a blank line of spaces is
    one), bytes that are not UTF-8, a cell past the size limit: it raises :class:`_NotTheSame`."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if isinstance(path, ObjectPath):
        raise _NotTheSame  # a manifest in a bucket: the csv module, streamed (see _arrow_quoting)
    odd: list[int] = []

    def invalid(_row: Any) -> str:
        odd.append(1)
        return "skip"

    try:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=columns, skip_rows=1, block_size=block),
            parse_options=pcsv.ParseOptions(
                quote_char='"' if quoted else False,
                newlines_in_values=quoted,
                ignore_empty_lines=True,
                invalid_row_handler=invalid,
            ),
            convert_options=pcsv.ConvertOptions(
                column_types=dict.fromkeys(columns, pa.string()),
                strings_can_be_null=False,
                include_columns=columns,
            ),
        )
    except pa.ArrowInvalid:  # not UTF-8, or a cell count unlike the header's, in the first block
        raise _NotTheSame from None
    start = 0
    with reader:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid:
                raise _NotTheSame from None
            if odd:
                raise _NotTheSame
            if batch.nbytes >= _CSV_FIELD_LIMIT and _longest_cell(batch) >= _CSV_FIELD_LIMIT:
                raise _NotTheSame
            yield ArrowChunk(
                start=start, length=batch.num_rows, arrays={c: batch.column(c) for c in wanted}, errors={}
            )
            start += batch.num_rows


@contextmanager
def _parquet_file(path: ManifestPath) -> Iterator[Any]:
    """A ``pyarrow.parquet.ParquetFile`` over a local file or an object (read by row groups through
    the object store file: only the footer and the row groups read are fetched)."""
    import pyarrow.parquet as pq

    if isinstance(path, Path):
        with pq.ParquetFile(path) as pf:
            yield pf
        return
    with path.open("rb") as fh, pq.ParquetFile(fh) as pf:
        yield pf


def _longest_cell(batch: pa.RecordBatch) -> int:
    import pyarrow.compute as pc

    return max((pc.max(pc.binary_length(col)).as_py() or 0 for col in batch.columns), default=0)


def csv_records(path: ManifestPath, columns: list[str]) -> Iterator[tuple[str, ...] | list[str] | RowFailure]:
    """:func:`csv_rows`, read by Arrow where Arrow reads the same (a quote-free file: a few times
    faster), and by the csv module from the first row it might not; a few hundred rows in Python
    objects at a time either way."""
    done = 0
    # One column: csv_rows skips a line of spaces as blank, Arrow would not. A small file: importing
    # pyarrow (~0.3 s) would cost more than it saves.
    quoting = (
        _arrow_quoting(path) if len(columns) > 1 and path.stat().st_size >= _ARROW_ROWS_MIN_BYTES else None
    )
    if quoting is not None:
        try:
            for chunk in _arrow_csv_chunks(path, columns, columns, quoting, block=_ARROW_ROWS_BLOCK):
                for offset in range(0, chunk.length, _ROWS_SLICE):
                    cells = [chunk.arrays[c].slice(offset, _ROWS_SLICE).to_pylist() for c in columns]
                    yield from zip(*cells, strict=True)
                done += chunk.length
            return
        except _NotTheSame:
            pass
    yield from itertools.islice(csv_rows(path, len(columns)), done, None)


# --- JSONL reading --------------------------------------------------------------------------------


def jsonl_value(raw: bytes, line_no: int) -> Any:
    """One JSONL line's value, or the RowFailure naming the line (not UTF-8, not JSON).

    orjson first (fast); the standard module for what orjson refuses but JSON-in-practice holds
    (``NaN``, ``Infinity``, integers past 64 bits, a BOM) and for its error message.
    """
    import orjson

    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError:
        problem = utf8_problem(raw.decode("utf-8", "surrogateescape"), line_no)
        return RowFailure("bad_row", problem or f"line {line_no} is not UTF-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return RowFailure("bad_row", f"line {line_no} is not JSON: {exc.msg}")


# --- the manifest -------------------------------------------------------------------------------


@dataclass(slots=True)
class ArrowChunk:
    """Rows ``start`` .. ``start + length - 1`` as Arrow arrays of the columns asked for. A row that
    is bad as read is null in every array, and its error is in ``errors`` by position in the chunk."""

    start: int
    length: int
    arrays: dict[str, pa.Array]
    errors: dict[int, RowFailure]


@dataclass(slots=True)
class Manifest:
    """A manifest file and how its columns map to rows; see the module docstring."""

    path: ManifestPath
    format: Format
    id_column: str | None
    image_column: str
    prompt_column: str | None
    prompt_template: str | None
    _columns: list[str] | None = field(default=None, repr=False)
    _types: dict[str, FieldType] | None = field(default=None, repr=False)

    # -- schema --

    @property
    def columns(self) -> list[str]:
        """The manifest's columns: the header (CSV), the schema (Parquet), the first object (JSONL)."""
        if self._columns is None:
            self._load_schema()
        assert self._columns is not None
        return self._columns

    def field_types(self) -> dict[str, FieldType]:
        """Each column's type for the results' Parquet schema, in manifest order."""
        if self._types is None:
            self._load_schema()
        assert self._types is not None
        return dict(self._types)

    def _load_schema(self) -> None:
        if not self.path.is_file():
            raise ManifestError(f"input.manifest: {self.path} does not exist")
        loader = {"csv": self._csv_schema, "jsonl": self._jsonl_schema, "parquet": self._parquet_schema}
        cols, types = loader[self.format]()
        self._columns, self._types = cols, types

    def _csv_schema(self) -> tuple[list[str], dict[str, FieldType]]:
        try:
            with self.path.open("rb") as fh:
                header = _csv_reader(self.path, fh)[2]
        except OSError as exc:
            raise ManifestError(f"input.manifest: cannot read the header of {self.path.name}: {exc}") from exc
        if not header or not any(h.strip() for h in header):
            raise ManifestError(f"input.manifest: {self.path.name} is empty (no header line)")
        cols = [h.strip() for h in header]
        repeated = sorted({c for c in cols if cols.count(c) > 1})
        if repeated:
            raise ManifestError(f"input.manifest: {self.path.name} repeats column(s) {', '.join(repeated)}")
        return cols, dict.fromkeys(cols, "string")

    def _jsonl_schema(self) -> tuple[list[str], dict[str, FieldType]]:
        try:
            for _index, _line, obj in self._jsonl_objects():
                if isinstance(obj, dict):
                    cols = [str(k) for k in obj]
                    return cols, dict.fromkeys(cols, "string")
        except OSError as exc:
            raise ManifestError(f"input.manifest: cannot read {self.path.name}: {exc}") from exc
        raise ManifestError(f"input.manifest: {self.path.name} holds no JSON object line")

    def _parquet_schema(self) -> tuple[list[str], dict[str, FieldType]]:
        import pyarrow as pa

        try:
            with _parquet_file(self.path) as pf:
                schema = pf.schema_arrow
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(f"input.manifest: cannot read the schema of {self.path.name}: {exc}") from exc
        types: dict[str, FieldType] = {}
        for fld in schema:
            t = fld.type
            if pa.types.is_boolean(t):
                types[fld.name] = "bool"
            elif pa.types.is_integer(t):
                types[fld.name] = "int64"
            elif pa.types.is_floating(t):
                types[fld.name] = "double"
            else:
                types[fld.name] = "string"
        return list(types), types

    def check(self) -> None:
        """Raise :class:`ManifestError` for anything that would make every row fail."""
        cols = self.columns
        listing = ", ".join(cols)
        wanted = [
            ("input.id_column", self.id_column),
            ("input.image_column", self.image_column),
            ("input.prompt_column", self.prompt_column),
        ]
        for key, col in wanted:
            if col is not None and col not in cols:
                raise ManifestError(f"{key}: column {col!r} is not in {self.path.name} (columns: {listing})")
        if self.prompt_template is None:
            return
        names = self.template_names()
        if self.format == "jsonl":
            return  # no fixed schema: a field missing in a row is that row's template_error
        for name in names:
            if name not in cols:
                raise ManifestError(
                    f"input.prompt: template field {{{name}}} is not a column of {self.path.name} "
                    f"(columns: {listing})"
                )

    def template_names(self) -> list[str]:
        """The columns the prompt template reads (none without a template)."""
        if self.prompt_template is None:
            return []
        try:
            return template_fields(self.prompt_template)
        except ValueError as exc:
            raise ManifestError(f"input.prompt: {exc}") from exc

    # -- rows --

    def rows(self) -> Iterator[Row]:
        """Every row, in manifest order, streamed (constant memory).

        Raises :class:`ManifestError` where the file turns out unusable past its header (a CSV quote
        open at the end of the file), after the rows before it.
        """
        make = _RowMaker(self).make
        for index, record in enumerate(self._records()):
            yield make(index, record)

    def _records(self) -> Iterator[Sequence[str] | dict[str, Any] | RowFailure]:
        """Each row as read: CSV cells, a JSONL/Parquet dict, or the RowFailure of a row bad as read."""
        if self.format == "csv":
            yield from csv_records(self.path, self.columns)
        elif self.format == "jsonl":
            for _index, line_no, obj in self._jsonl_objects():
                if isinstance(obj, dict | RowFailure):
                    yield obj
                else:
                    yield RowFailure("bad_row", f"line {line_no} is JSON {type(obj).__name__}, not an object")
        else:
            with _parquet_file(self.path) as pf:
                for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                    names = batch.schema.names
                    columns = [col.to_pylist() for col in batch.columns]
                    for values in zip(*columns, strict=True):
                        yield dict(zip(names, values, strict=True))

    def _jsonl_objects(self) -> Iterator[tuple[int, int, Any]]:
        with self.path.open("rb") as fh:
            index = 0
            for line_no, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                yield index, line_no, jsonl_value(raw, line_no)
                index += 1

    # -- Arrow arrays, for the estimate --

    @property
    def has_arrow_chunks(self) -> bool:
        """Whether :meth:`arrow_chunks` can read this manifest (CSV, Parquet: not JSONL, schemaless)."""
        return self.format != "jsonl"

    def arrow_chunks(self, columns: list[str]) -> Iterator[ArrowChunk]:
        """The rows as Arrow arrays of ``columns`` (CSV: strings; Parquet: the file's types)."""
        wanted = list(dict.fromkeys(columns))
        if self.format == "csv":
            yield from self._csv_arrow_chunks(wanted)
        elif self.format == "parquet":
            yield from self._parquet_arrow_chunks(wanted)
        else:
            raise ValueError("a JSONL manifest has no schema to read as Arrow arrays")

    def _csv_arrow_chunks(self, wanted: list[str]) -> Iterator[ArrowChunk]:
        """Arrow's own CSV reader where it reads exactly what :func:`csv_rows` does, else (and from
        the first row it might not) :func:`csv_rows`: the same rows either way."""
        done = 0
        # One column: csv_rows skips a line of spaces as blank, Arrow would not.
        quoting = _arrow_quoting(self.path) if len(self.columns) > 1 else None
        if quoting is not None:
            try:
                for chunk in _arrow_csv_chunks(self.path, self.columns, wanted, quoting):
                    yield chunk
                    done += chunk.length
                return
            except _NotTheSame:
                pass
        yield from self._csv_python_chunks(wanted, done)

    def _csv_python_chunks(self, wanted: list[str], skip: int) -> Iterator[ArrowChunk]:
        import pyarrow as pa

        positions = [self.columns.index(c) for c in wanted]
        nulls = [None] * len(self.columns)
        start = skip
        rows = itertools.islice(csv_rows(self.path, len(self.columns)), skip, None)
        for chunk in chunked(rows, _PYTHON_CHUNK_ROWS):
            errors = {i: r for i, r in enumerate(chunk) if type(r) is RowFailure}
            records = [nulls if type(r) is RowFailure else r for r in chunk] if errors else chunk
            cells = list(zip(*records, strict=True))
            arrays = {c: pa.array(cells[p], pa.string()) for c, p in zip(wanted, positions, strict=True)}
            yield ArrowChunk(start=start, length=len(chunk), arrays=arrays, errors=errors)
            start += len(chunk)

    def _parquet_arrow_chunks(self, wanted: list[str]) -> Iterator[ArrowChunk]:
        start = 0
        with _parquet_file(self.path) as pf:
            for batch in pf.iter_batches(batch_size=ARROW_CHUNK_ROWS, columns=wanted):
                arrays = {c: batch.column(c) for c in wanted}
                yield ArrowChunk(start=start, length=batch.num_rows, arrays=arrays, errors={})
                start += batch.num_rows

    # -- one row --

    def prompt_of(self, record: dict[str, Any], names: list[str]) -> tuple[str | RowFailure, str]:
        """The prompt (or its error), and the text the derived id hashes for it."""
        if self.prompt_template is not None:
            prompt = render_template(self.prompt_template, names, record, self.format == "csv")
            if isinstance(prompt, RowFailure):
                # No prompt to hash: the fields the template reads identify the row instead.
                key = json.dumps({n: record.get(n) for n in names}, sort_keys=True, default=str)
                return prompt, "template-fields:" + key
            return prompt, prompt
        if self.prompt_column is not None:
            value = record.get(self.prompt_column)
            if value is None or (isinstance(value, str) and not value.strip()):
                return RowFailure("bad_row", f"prompt column {self.prompt_column!r} is empty"), ""
            text = value if isinstance(value, str) else str(value)
            return text, text
        return "", ""

    def id_of(
        self, record: dict[str, Any], images: list[str] | None, image_cell: Any, prompt_key: str
    ) -> str | RowFailure:
        """The row's id: its id cell as a string, or derived from its content."""
        if self.id_column is None:
            return derive_id(images, image_cell, prompt_key)
        value = record.get(self.id_column)
        if value is None or (isinstance(value, str) and not value.strip()):
            return RowFailure("bad_row", f"id column {self.id_column!r} is empty")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value.strip() if isinstance(value, str) else str(value)


def parse_image_cell(cell: Any, base: str) -> tuple[list[str], list[str]] | RowFailure:
    """(the image value(s) as written, resolved against ``base``), or the cell's error."""
    images = parse_images(cell)
    if isinstance(images, RowFailure):
        return images
    return images, [resolve_image(v, base) for v in images]


def image_cache_key(cell: Any) -> Any:
    """A hashable key for an image cell (None: not worth caching)."""
    if isinstance(cell, str):
        return cell
    if isinstance(cell, list | tuple) and all(isinstance(v, str) for v in cell):
        return tuple(cell)
    return None


class _RowMaker:
    """Builds the :class:`Row` objects of one pass over a manifest: each distinct image cell parsed
    once, and a lean path for CSV cells (always strings) that falls back on the general code for any
    row with something to report, so both word errors the same."""

    __slots__ = (
        "_base",
        "_columns",
        "_id",
        "_image_column",
        "_images",
        "_m",
        "_names",
        "_prompt",
        "_template",
    )

    def __init__(self, manifest: Manifest) -> None:
        self._m = manifest
        self._names = manifest.template_names()
        self._template = manifest.prompt_template
        self._image_column = manifest.image_column
        csv_format = manifest.format == "csv"
        self._columns = manifest.columns if csv_format else []
        self._base = str(manifest.path.parent)
        self._images: dict[Any, tuple[list[str], list[str]] | RowFailure] = {}
        self._prompt = self._csv_template if csv_format and self._template is not None else self._any_prompt
        self._id = self._csv_id if csv_format and manifest.id_column is not None else manifest.id_of

    def make(self, index: int, record: Sequence[str] | dict[str, Any] | RowFailure) -> Row:
        # type(...) is: the fastest test on the CSV path, and one mypy narrows by.
        if type(record) is tuple or type(record) is list:  # CSV cells, as many as the header's
            record = fields = dict(zip(self._columns, record, strict=False))
        elif isinstance(record, RowFailure):
            return Row(derive_id(None, f"#line {index + 1}", record.message), [], "", {}, index, record)
        else:
            record = cast("dict[str, Any]", record)  # the only other kind _records() yields
            # JSONL and Parquet values may be lists, dates, bytes, NaN...: JSON-able scalars for fields.
            fields = {k: to_scalar(v) for k, v in record.items()}
        image_cell = record.get(self._image_column)
        parsed = self._image(image_cell)
        if isinstance(parsed, RowFailure):
            error: RowFailure | None = parsed
            image_list: list[str] | None = None
            resolved: list[str] = []
        else:
            error = None
            image_list, resolved = parsed
        prompt, prompt_key = self._prompt(record)
        if isinstance(prompt, RowFailure):
            error = error or prompt
            prompt = ""
        row_id = self._id(record, image_list, image_cell, prompt_key)
        if isinstance(row_id, RowFailure):
            error = error or row_id
            row_id = derive_id(image_list, image_cell, prompt_key)
        return Row(row_id, list(resolved), prompt, fields, index, error)

    def _any_prompt(self, record: dict[str, Any]) -> tuple[str | RowFailure, str]:
        return self._m.prompt_of(record, self._names)

    def _csv_template(self, record: dict[str, Any]) -> tuple[str | RowFailure, str]:
        assert self._template is not None
        for name in self._names:
            if not record[name]:
                return self._any_prompt(record)  # an empty field: the general path words the error
        try:
            text = self._template.format_map(record)
        except (ValueError, TypeError, KeyError, IndexError):
            return self._any_prompt(record)
        return text, text

    def _csv_id(
        self, record: dict[str, Any], images: list[str] | None, image_cell: Any, prompt_key: str
    ) -> str | RowFailure:
        column = self._m.id_column
        assert column is not None  # chosen in __init__ only with an id column
        value = record[column].strip()
        return value or self._m.id_of(record, images, image_cell, prompt_key)

    def _image(self, cell: Any) -> tuple[list[str], list[str]] | RowFailure:
        key = image_cache_key(cell)
        if key is None:
            return parse_image_cell(cell, self._base)
        found = self._images.get(key)
        if found is None:
            if len(self._images) >= _IMAGE_CACHE_SIZE:
                self._images.clear()
            found = self._images[key] = parse_image_cell(cell, self._base)
        return found


def open_manifest(
    path: str | Path,
    *,
    id_column: str | None,
    image_column: str,
    prompt_column: str | None,
    prompt_template: str | None,
) -> Manifest:
    """A :class:`Manifest` over ``path`` (nothing is read until ``columns``/``check``/``rows``)."""
    p: ManifestPath = ObjectPath(str(path)) if is_object(str(path)) else Path(path).absolute()
    if prompt_column is not None and prompt_template is not None:
        raise ManifestError("input: give prompt_column or a prompt template, not both")
    return Manifest(
        path=p,
        format=detect_format(p),
        id_column=id_column,
        image_column=image_column,
        prompt_column=prompt_column,
        prompt_template=prompt_template,
    )


def job_manifest(job: JobConfig) -> Manifest:
    """The manifest of a job's ``[input]`` table, its header checked (raises :class:`ManifestError`)."""
    manifest = open_manifest(
        job.manifest_path,
        id_column=job.input.id_column,
        image_column=job.input.image_column,
        prompt_column=job.input.prompt_column,
        prompt_template=job.input.prompt,
    )
    manifest.check()
    return manifest
