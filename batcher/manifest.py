"""Manifests: CSV, JSONL or Parquet, streamed as :class:`~batcher.records.Row` in constant memory.

The format comes from the extension (``.csv``; ``.jsonl``/``.ndjson``; ``.parquet``/``.pq``).
:meth:`Manifest.check` finds the errors that would make every row fail (missing file, unreadable
header, a missing column, a template field that is no column) and raises :class:`ManifestError`,
whose message names the file and the job key. Anything wrong with a single row (no image, an image
cell that is not a path/URL/list of them, a template field empty in that row, a JSONL line that is
not an object) is *not* fatal: the row comes out with ``Row.error`` set.

Ids: with ``id_column`` the cell's value (as a string). Without it, a stable id derived from the row's
content: the first 16 hex digits of a SHA-256 over the image value(s) as written in the manifest and
the prompt. It does not depend on the row's position, so a manifest that grows keeps old rows'
ids. Two identical rows (same images, same prompt) therefore get the same id and are reported as
duplicates by the job state; give the manifest an id column if that is legitimate.

Images: a cell holds one path or http(s) URL, or a list of them (a JSON list string such as
``["a.jpg","b.jpg"]`` in CSV, a real list in JSONL/Parquet). Paths are resolved against the
manifest's folder.

Templates: ``prompt = "Describe {title}"`` uses :meth:`str.format` fields over the row's columns
(``{{``/``}}`` for literal braces; only plain ``{column}`` names, optionally with a format spec).
A field that is missing, null, or an empty CSV cell in a row gives that row a ``template_error``.

Field types (for the Parquet sink's schema, :meth:`Manifest.field_types`): CSV columns are strings;
Parquet columns keep integer/float/bool/string types (anything else is stored as its string form);
JSONL has no schema, so its columns are strings (non-string values as JSON text).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from batcher.records import Row, RowError
from batcher.urls import scheme_of

Format = Literal["csv", "jsonl", "parquet"]
#: Sink column types a manifest column can have.
FieldType = Literal["string", "int64", "double", "bool"]

EXTENSIONS: dict[str, Format] = {
    ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
}
DERIVED_ID_HEX = 16
_PARQUET_BATCH_ROWS = 4096
# CSV cells hold whole prompts; the csv module's default 128 KiB cap is too low for some.
_CSV_FIELD_LIMIT = 16 * 1024 * 1024


class ManifestError(ValueError):
    """The manifest cannot be used at all; the message names the file and the job key."""


# --- pure helpers -------------------------------------------------------------------------------


def detect_format(path: Path) -> Format:
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


def render_template(template: str, names: list[str], values: dict[str, Any],
                    empty_is_missing: bool) -> str | RowError:
    """The prompt for one row, or the row error naming the first missing field."""
    for name in names:
        value = values.get(name)
        if value is None or (empty_is_missing and value == "") or (
                isinstance(value, float) and math.isnan(value)):
            state = "empty" if name in values else "missing"
            return RowError("template_error", f"template field {{{name}}} is {state} in this row")
    try:
        return template.format_map(values)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        return RowError("template_error", f"template could not be filled: {exc}")


def parse_images(cell: Any) -> list[str] | RowError:
    """The image value(s) of one cell, as written: a path/URL, or a list of them."""
    if isinstance(cell, str):
        text = cell.strip()
        if text.startswith("["):
            try:
                cell = json.loads(text)
            except json.JSONDecodeError as exc:
                return RowError("bad_row", f"image cell looks like a JSON list but is not one: {exc.msg}")
        elif not text:
            return RowError("bad_row", "image cell is empty")
        else:
            return [text]
    if cell is None:
        return RowError("bad_row", "image cell is empty")
    if isinstance(cell, list | tuple):
        if not cell:
            return RowError("bad_row", "image list is empty")
        out: list[str] = []
        for item in cell:
            if not isinstance(item, str) or not item.strip():
                return RowError("bad_row", f"image list holds {item!r}, not a path or URL")
            out.append(item.strip())
        return out
    return RowError("bad_row", f"image cell holds {type(cell).__name__} {cell!r}, not a path or URL")


def resolve_image(value: str, base: str | Path) -> str:
    """A ``scheme://`` source as given (a URL, or a scheme the run refuses by name); a path resolved
    against the manifest's folder."""
    if scheme_of(value) is not None:
        return value
    # os.path, not pathlib: this runs once per image of every row.
    if value.startswith("~"):
        value = os.path.expanduser(value)
    return value if os.path.isabs(value) else os.path.join(base, value)


def derive_id(images: list[str] | None, image_cell: Any, prompt_key: str) -> str:
    """A stable id from the row's content: the image value(s) as written and the prompt."""
    raw = images if images is not None else image_cell
    payload = json.dumps([raw, prompt_key], ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:DERIVED_ID_HEX]


def to_scalar(value: Any) -> Any:
    """A JSON-able scalar for a manifest cell (lists, dates, bytes... become text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    iso = getattr(value, "isoformat", None)
    return iso() if callable(iso) else str(value)


# --- the manifest -------------------------------------------------------------------------------


@dataclass(slots=True)
class Manifest:
    """A manifest file and how its columns map to rows; see the module docstring."""

    path: Path
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
            with self.path.open("r", encoding="utf-8-sig", newline="") as fh:
                header = next(csv.reader(fh), None)
        except (UnicodeDecodeError, csv.Error, OSError) as exc:
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
            for _index, obj in self._jsonl_objects():
                if isinstance(obj, dict):
                    cols = [str(k) for k in obj]
                    return cols, dict.fromkeys(cols, "string")
        except (UnicodeDecodeError, OSError) as exc:
            raise ManifestError(f"input.manifest: cannot read {self.path.name}: {exc}") from exc
        raise ManifestError(f"input.manifest: {self.path.name} holds no JSON object line")

    def _parquet_schema(self) -> tuple[list[str], dict[str, FieldType]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(self.path)
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
        wanted = [("input.id_column", self.id_column), ("input.image_column", self.image_column),
                  ("input.prompt_column", self.prompt_column)]
        for key, col in wanted:
            if col is not None and col not in cols:
                raise ManifestError(f"{key}: column {col!r} is not in {self.path.name} (columns: {listing})")
        if self.prompt_template is None:
            return
        try:
            names = template_fields(self.prompt_template)
        except ValueError as exc:
            raise ManifestError(f"input.prompt: {exc}") from exc
        if self.format == "jsonl":
            return  # no fixed schema: a field missing in a row is that row's template_error
        for name in names:
            if name not in cols:
                raise ManifestError(
                    f"input.prompt: template field {{{name}}} is not a column of {self.path.name} "
                    f"(columns: {listing})")

    # -- rows --

    def rows(self) -> Iterator[Row]:
        """Every row, in manifest order, streamed (constant memory)."""
        names: list[str] = []
        if self.prompt_template is not None:
            try:
                names = template_fields(self.prompt_template)
            except ValueError as exc:
                raise ManifestError(f"input.prompt: {exc}") from exc
        empty_is_missing = self.format == "csv"
        base = str(self.path.parent)
        for index, record in self._records():
            if isinstance(record, RowError):
                yield Row(id=derive_id(None, f"#line {index + 1}", record.message), images=[],
                          prompt="", fields={}, index=index, error=record)
            else:
                yield self._make_row(index, record, names, empty_is_missing, base)

    def _records(self) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        if self.format == "csv":
            yield from self._csv_records()
        elif self.format == "jsonl":
            for index, obj in self._jsonl_objects():
                if isinstance(obj, dict):
                    yield index, {str(k): v for k, v in obj.items()}
                else:
                    yield index, obj if isinstance(obj, RowError) else RowError(
                        "bad_row", f"line {index + 1} is JSON {type(obj).__name__}, not an object")
        else:
            yield from self._parquet_records()

    def _csv_records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
        cols = self.columns
        with self.path.open("r", encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            index, width = 0, len(cols)
            for cells in reader:
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue  # blank line: not a row
                if len(cells) != width:
                    # Short rows read as empty cells; extra cells beyond the header are dropped.
                    cells = (cells + [""] * width)[:width]
                yield index, dict(zip(cols, cells, strict=True))
                index += 1

    def _jsonl_objects(self) -> Iterator[tuple[int, Any]]:
        with self.path.open("r", encoding="utf-8-sig") as fh:
            index = 0
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield index, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield index, RowError("bad_row", f"line {line_no} is not JSON: {exc.msg}")
                index += 1

    def _parquet_records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        import pyarrow.parquet as pq

        index = 0
        with pq.ParquetFile(self.path) as pf:
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                for record in batch.to_pylist():
                    yield index, record
                    index += 1

    def _make_row(self, index: int, record: dict[str, Any], names: list[str],
                  empty_is_missing: bool, base: str) -> Row:
        image_cell = record.get(self.image_column)
        images = parse_images(image_cell)
        error = images if isinstance(images, RowError) else None
        image_list = None if isinstance(images, RowError) else images
        prompt, prompt_key = self._prompt(record, names, empty_is_missing)
        if isinstance(prompt, RowError):
            error = error or prompt
            prompt = ""
        # CSV cells are strings already; other formats may hold lists, dates, bytes...
        fields = record if self.format == "csv" else {k: to_scalar(v) for k, v in record.items()}
        row_id = self._row_id(record, image_list, image_cell, prompt_key)
        if isinstance(row_id, RowError):
            error = error or row_id
            row_id = derive_id(image_list, image_cell, prompt_key)
        resolved = [resolve_image(v, base) for v in image_list] if image_list else []
        return Row(id=row_id, images=resolved, prompt=prompt, fields=fields, index=index, error=error)

    def _prompt(self, record: dict[str, Any], names: list[str],
                empty_is_missing: bool) -> tuple[str | RowError, str]:
        """The prompt (or its error), and the text the derived id hashes for it."""
        if self.prompt_template is not None:
            prompt = render_template(self.prompt_template, names, record, empty_is_missing)
            if isinstance(prompt, RowError):
                # No prompt to hash: the fields the template reads identify the row instead.
                key = json.dumps({n: record.get(n) for n in names}, sort_keys=True, default=str)
                return prompt, "template-fields:" + key
            return prompt, prompt
        if self.prompt_column is not None:
            value = record.get(self.prompt_column)
            if value is None or (isinstance(value, str) and not value.strip()):
                return RowError("bad_row", f"prompt column {self.prompt_column!r} is empty"), ""
            text = value if isinstance(value, str) else str(value)
            return text, text
        return "", ""

    def _row_id(self, record: dict[str, Any], images: list[str] | None, image_cell: Any,
                prompt_key: str) -> str | RowError:
        if self.id_column is None:
            return derive_id(images, image_cell, prompt_key)
        value = record.get(self.id_column)
        if value is None or (isinstance(value, str) and not value.strip()):
            return RowError("bad_row", f"id column {self.id_column!r} is empty")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value.strip() if isinstance(value, str) else str(value)


def open_manifest(path: str | Path, *, id_column: str | None, image_column: str,
                  prompt_column: str | None, prompt_template: str | None) -> Manifest:
    """A :class:`Manifest` over ``path`` (nothing is read until ``columns``/``check``/``rows``)."""
    p = Path(path).absolute()
    if prompt_column is not None and prompt_template is not None:
        raise ManifestError("input: give prompt_column or a prompt template, not both")
    return Manifest(path=p, format=detect_format(p), id_column=id_column, image_column=image_column,
                    prompt_column=prompt_column, prompt_template=prompt_template)
