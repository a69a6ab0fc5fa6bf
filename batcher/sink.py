"""Results as Parquet parts that appear atomically, exactly one row per id across any number of runs.

Layout: ``OUT/results/part-NNNNN.parquet``. A part is written to a hidden temp file in the same folder
(``.part-NNNNN.parquet.tmp``; readers of ``results/*.parquet`` and pyarrow datasets skip dot files),
fsynced, then recorded in the job state together with its rows in ONE transaction, then renamed into
place and the folder fsynced. So ``results/*.parquet`` only ever holds complete parts.

Exactly once. The job state says which part holds each result (``results.part_id``); the files
follow the state, never the other way round:

* Re-recording a row that is already in a part (``--retry-errors``, a transient error retried)
  unassigns it and marks that part *dirty*. Every export first rewrites dirty parts in place,
  without the rows they no longer own (temp file, fsync, ``os.replace`` over the old file), and
  only then writes the new versions, so a reader never sees two versions of a row at once.
* :meth:`Sink.recover`, run at start-up, settles any crash: a part recorded but not yet renamed is
  renamed; a recorded part with neither file is forgotten and its rows exported again; files the
  state does not know (temps, or a part whose transaction was lost) are deleted; dirty parts are
  rewritten.

Frequent exports leave many small parts; :meth:`Sink.compact` merges runs of them with the same
temp/transaction/rename discipline (call it at the end of a run).

Schema (the same for every part; :func:`result_schema`): ``id, status, text, model, stop_reason,
input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens, attempts,
latency_s, request_id, error_type, error_message, images (list<struct<source, width, height, bytes,
media_type, transport, tokens, file_id>>), warnings (list<string>), cost_usd, finished_at
(timestamp[us, UTC]), mode, tool_input``; then, for a job with structured output ([output],
:class:`batcher.output.OutputSpec`), its typed columns: one per top-level property of the schema
(``columns = "flatten"``) or one struct column ``data`` (``"struct"``), with the Arrow types the
schema implies (:mod:`batcher.output.columns`), filled from :attr:`Result.data` (null on error
rows); then the manifest's own columns under their own names (``manifest_`` prefixed where a name
collides with a result column) with the manifest's types
(:meth:`batcher.manifest.Manifest.field_types`: strings for CSV and JSONL, int64/double/bool/string
for Parquet). The manifest's field list is fixed by the job's first Sink and kept in the state, so
parts of later runs match even if the manifest gained columns (those are not stored; see
:attr:`Sink.warnings`). So is the output's schema (its fingerprint and columns): a later Sink whose
[output] differs (another schema or columns mode, [output] added or removed) while the state holds
results is refused (:class:`SinkError`, exit 2): its parts would have other columns.

pyarrow is imported lazily: importing this module stays light.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from batcher.errors import JobError
from batcher.exits import EXIT_CONFIG
from batcher.records import Result
from batcher.state import JobState, PartRecord

if TYPE_CHECKING:
    import pyarrow as pa

    from batcher.output import OutputSpec
    from batcher.stores import MirrorReport, ResultsMirror

RESULTS_DIR = "results"
#: Answers of rows the manifest no longer has: OUT/removed/removed.parquet (same schema).
REMOVED_DIR = "removed"
REMOVED_FILE = "removed.parquet"
#: meta: the pass whose removed rows OUT/removed/removed.parquet holds.
REMOVED_META_KEY = "sink.removed_pass"
FIELDS_META_KEY = "sink.fields"
#: meta: the structured output the parts were written with: {"fingerprint", "columns"} (none: null).
OUTPUT_META_KEY = "sink.output"
MANIFEST_PREFIX = "manifest_"
#: Results converted per Parquet write: bounds memory however large a part is.
WRITE_CHUNK = 2000
DEFAULT_PART_ROWS = 50_000

#: The result columns, in order, with their types by name (see :func:`result_schema`).
RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
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
    ("images", "images"),
    ("warnings", "list<string>"),
    ("cost_usd", "double"),
    ("finished_at", "timestamp"),
    ("mode", "string"),
    ("tool_input", "string"),
)
RESULT_NAMES = frozenset(name for name, _ in RESULT_COLUMNS)
IMAGE_FIELDS: tuple[tuple[str, str], ...] = (
    ("source", "string"),
    ("width", "int64"),
    ("height", "int64"),
    ("bytes", "int64"),
    ("media_type", "string"),
    ("transport", "string"),
    ("tokens", "int64"),
    ("file_id", "string"),
)


class SinkError(JobError, RuntimeError):
    """The results folder cannot be written or read."""


# --- pure helpers -------------------------------------------------------------------------------


def part_name(part_id: int) -> str:
    return f"part-{part_id:05d}.parquet"


def temp_name(name: str) -> str:
    return f".{name}.tmp"


def column_names(fields: Mapping[str, str]) -> dict[str, str]:
    """Manifest column -> results column: as named, ``manifest_``-prefixed where that collides."""
    taken = set(RESULT_NAMES)
    out: dict[str, str] = {}
    for name in fields:
        target = name
        while target in taken:
            target = MANIFEST_PREFIX + target
        taken.add(target)
        out[name] = target
    return out


def coerce(value: Any, kind: str) -> Any:
    """A manifest value as the column type ``kind``; None where it cannot be one."""
    if value is None:
        return None
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        return True if text in ("true", "1") else False if text in ("false", "0") else None
    try:
        if kind == "int64":
            if isinstance(value, float):
                return int(value) if value.is_integer() else None
            return int(value)
        if kind == "double":
            return float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    raise ValueError(f"unknown manifest field type {kind!r}")


def plan_compaction(parts: list[PartRecord], target_rows: int) -> list[list[PartRecord]]:
    """Groups of consecutive small, clean, final parts to merge; each group of two or more.

    A part of ``target_rows`` or more, or one that is dirty or pending, ends a group; a group is
    closed once it reaches ``target_rows``.
    """
    groups: list[list[PartRecord]] = []
    current: list[PartRecord] = []
    size = 0
    for part in parts:
        if part.dirty or part.state != "final" or part.rows >= target_rows:
            groups.append(current)
            current, size = [], 0
            continue
        if current and size + part.rows > target_rows:
            groups.append(current)
            current, size = [], 0
        current.append(part)
        size += part.rows
    groups.append(current)
    return [g for g in groups if len(g) >= 2]


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- schema -------------------------------------------------------------------------------------


def _arrow_type(kind: str) -> pa.DataType:
    import pyarrow as pa

    simple = {
        "string": pa.string(),
        "int64": pa.int64(),
        "double": pa.float64(),
        "bool": pa.bool_(),
        "list<string>": pa.list_(pa.string()),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    if kind == "images":
        return pa.list_(pa.struct([(n, simple[t]) for n, t in IMAGE_FIELDS]))
    return simple[kind]


def result_schema(fields: Mapping[str, str] | None = None, output: OutputSpec | None = None) -> pa.Schema:
    """The results schema: the result columns, the output's (if any), then the manifest's (renamed per
    :func:`column_names`)."""
    import pyarrow as pa

    cols = [pa.field(n, _arrow_type(t)) for n, t in RESULT_COLUMNS]
    if output is not None:
        cols += output.arrow_fields()
    fields = fields or {}
    names = column_names(fields)
    cols += [pa.field(names[n], _arrow_type(t)) for n, t in fields.items()]
    seen: set[str] = set()
    for col in cols:
        if col.name in seen:
            # batcher.output.check_column_names refuses this at start; a Sink must not write it.
            raise SinkError(
                f"results column {col.name!r} would appear twice (output.schema and the manifest)"
            )
        seen.add(col.name)
    return pa.schema(cols)


def output_meta(output: OutputSpec | None) -> dict[str, Any]:
    """What the state keeps of the output the parts are written with."""
    if output is None:
        return {"fingerprint": None, "columns": []}
    return {"fingerprint": output.fingerprint, "columns": [list(c) for c in output.column_types()]}


# --- the sink -----------------------------------------------------------------------------------

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _exclusive(method: Callable[Concatenate[Sink, _P], _R]) -> Callable[Concatenate[Sink, _P], _R]:
    """One writer at a time: exports run in worker threads (off the event loop), and two at once
    would write the same rows into two parts."""

    @functools.wraps(method)
    def locked(self: Sink, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


@dataclass(slots=True)
class RecoverReport:
    """What :meth:`Sink.recover` had to settle."""

    renamed: list[str] = field(default_factory=list)
    dropped_parts: list[str] = field(default_factory=list)
    requeued_rows: int = 0
    deleted_files: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)


class Sink:
    """Writes finished results from the job state into Parquet parts.

    ``fields`` are the manifest's column types (``Manifest.field_types()``); the first Sink of a job
    fixes them in the state. ``output`` is the job's structured output (None: no [output]); its
    columns are fixed the same way, but a different one is refused (:class:`SinkError`, exit 2), not
    ignored. ``on_step`` is a fault-injection seam for tests: it is called with the name of each step
    of a write ("written", "committed", "renamed", "rewrite-written") and may raise or kill the
    process to simulate a crash there.
    """

    def __init__(
        self,
        out_dir: str | Path,
        state: JobState,
        fields: Mapping[str, str] | None = None,
        *,
        output: OutputSpec | None = None,
        on_step: Callable[[str], None] | None = None,
        mirror: ResultsMirror | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.state = state
        self._fix_output(output)
        self.dir = self.out_dir / RESULTS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.warnings: list[str] = []
        self.output = output
        self.fields = self._fix_fields(dict(fields) if fields is not None else None)
        self._names = column_names(self.fields)
        self.schema = result_schema(self.fields, output)
        self._on_step = on_step
        self._lock = threading.RLock()
        #: ``[run] results_uri``: sealed parts are also written there (:meth:`mirror_parts`)
        self.mirror = mirror
        #: the last failure to mirror after an export (the run goes on; the next export retries)
        self.mirror_failure: str | None = None

    def _fix_fields(self, fields: dict[str, str] | None) -> dict[str, str]:
        stored = self.state.get_meta(FIELDS_META_KEY)
        if stored is None:
            if fields is not None:
                self.state.set_meta(FIELDS_META_KEY, list(fields.items()))
            return fields or {}
        kept = dict(stored)
        if fields is not None and fields != kept:
            new = [n for n in fields if n not in kept]
            changed = [n for n in fields if n in kept and fields[n] != kept[n]]
            if new:
                self.warnings.append(
                    f"manifest columns added after the first run are not stored: {', '.join(new)}"
                )
            if changed:
                self.warnings.append(
                    f"manifest columns whose type changed keep their first type: {', '.join(changed)}"
                )
        return kept

    def _fix_output(self, output: OutputSpec | None) -> None:
        """Hold the output's columns to those the folder's parts were written with (state meta)."""
        wanted = output_meta(output)
        stored = self.state.get_meta(OUTPUT_META_KEY)
        if stored == wanted:
            return
        # Nothing stored: the job's first Sink, or a state from before structured output (whose
        # parts have no output columns, as a job without [output] has).
        same_columns = stored is None and output is None
        if not same_columns and self._holds_results():
            raise SinkError(
                f"{self.out_dir}: output.schema: differs from the one this output folder was written "
                "with (its parts have other columns); write to a new --out",
                exit_code=EXIT_CONFIG,
            )
        self.state.set_meta(OUTPUT_META_KEY, wanted)

    def _holds_results(self) -> bool:
        return bool(self.state.parts() or self.state.unexported(0, 1) or self.state.removed_results(0, 1))

    def _step(self, name: str) -> None:
        if self._on_step is not None:
            self._on_step(name)

    # -- export --

    @_exclusive
    def export(self, max_rows: int = DEFAULT_PART_ROWS) -> int:
        """Write every finished, unexported result to new parts of at most ``max_rows``.

        Returns the number of rows written. Dirty parts are rewritten first.
        """
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self._rewrite_dirty()
        total = 0
        while n := self._export_part(max_rows):
            total += n
        if self.mirror is not None:
            from batcher.stores import StoreError

            try:
                self.mirror_parts()
                self.mirror_failure = None
            except StoreError as exc:  # local parts are sealed: mirroring is tried again later
                self.mirror_failure = str(exc)
        return total

    @_exclusive
    def mirror_parts(self) -> MirrorReport | None:
        """``[run] results_uri``: upload the sealed parts the prefix lacks (new or rewritten since)
        and delete those a compaction merged away; None without a mirror. Raises
        ``batcher.stores.StoreError``. Blocking (network): call it in a worker thread."""
        if self.mirror is None:
            return None
        parts = self.state.parts()
        final = [p.name for p in parts if p.state == "final" and not p.dirty]
        held = frozenset(p.name for p in parts if p.state != "final" or p.dirty)
        return self.mirror.sync(self.dir, final, self.state, held)

    def _export_part(self, max_rows: int) -> int:
        import pyarrow.parquet as pq

        members: list[tuple[str, int]] = []
        writer: pq.ParquetWriter | None = None
        after, part_id, tmp = 0, 0, self.dir
        try:
            while len(members) < max_rows:
                page = self.state.unexported(after, min(WRITE_CHUNK, max_rows - len(members)))
                if not page:
                    break
                if writer is None:
                    part_id = self.state.allocate_part()
                    tmp = self.dir / temp_name(part_name(part_id))
                    writer = pq.ParquetWriter(tmp, self.schema)
                writer.write_table(self._table([Result.from_json(js) for _, _, _, js in page]))
                members.extend((row_id, version) for _, row_id, version, _ in page)
                after = page[-1][0]
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            return 0
        _fsync_file(tmp)
        self._step("written")
        name = part_name(part_id)
        fresh = self.state.commit_part(part_id, name, members)
        self._step("committed")
        # Parts dirtied while this one was written lose their stale copies before the new ones appear.
        self._rewrite_dirty()
        os.replace(tmp, self.dir / name)
        fsync_dir(self.dir)
        self._step("renamed")
        self.state.finalize_part(part_id)
        if not fresh:
            self._rewrite_dirty()
        return len(members)

    def _table(self, results: list[Result]) -> pa.Table:
        import pyarrow as pa

        columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        for r in results:
            for name, _ in RESULT_COLUMNS:
                if name == "images":
                    columns[name].append([{n: getattr(img, n) for n, _ in IMAGE_FIELDS} for img in r.images])
                elif name == "finished_at":
                    columns[name].append(int(r.finished_at * 1_000_000))
                else:
                    columns[name].append(getattr(r, name))
            if self.output is not None:
                for name, value in self.output.row_values(r.data).items():
                    columns[name].append(value)
            for src, kind in self.fields.items():
                columns[self._names[src]].append(coerce(r.fields.get(src), kind))
        arrays = [pa.array(columns[f.name], type=f.type) for f in self.schema]
        return pa.Table.from_arrays(arrays, schema=self.schema)

    # -- rewriting parts that hold superseded rows --

    def _rewrite_dirty(self) -> list[str]:
        done = []
        for part in self.state.parts():
            if part.dirty and (self.dir / part.name).exists():
                self._rewrite(part)
                done.append(part.name)
        return done

    def _rewrite(self, part: PartRecord) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        final = self.dir / part.name
        tmp = self.dir / temp_name(part.name)
        kept = 0
        writer: pq.ParquetWriter | None = None
        try:
            with pq.ParquetFile(final) as pf:
                for batch in pf.iter_batches(batch_size=WRITE_CHUNK):
                    ids = batch.column("id").to_pylist()
                    members = self.state.part_members(part.part_id, ids)
                    kept_batch = batch.filter(pa.array([i in members for i in ids]))
                    if kept_batch.num_rows:
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, pf.schema_arrow)
                        writer.write_batch(kept_batch)
                        kept += kept_batch.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            # Nothing left: the part goes. Unlink first: a crash before the record is dropped leaves
            # a recorded part with no file and no members, which recover() simply forgets.
            final.unlink()
            fsync_dir(self.dir)
            self.state.drop_part(part.part_id)
            return
        _fsync_file(tmp)
        self._step("rewrite-written")
        os.replace(tmp, final)
        fsync_dir(self.dir)
        self.state.part_cleaned(part.part_id, part.dirty, kept)

    # -- merging small parts --

    @_exclusive
    def compact(self, target_rows: int = DEFAULT_PART_ROWS) -> int:
        """Merge runs of small parts (frequent exports leave many) into parts of ~``target_rows``.

        Each merge: the new part is written to a temp file and fsynced; one transaction moves the
        rows to it and forgets the old parts; the old files are unlinked, then the new one renamed
        in. A concurrent reader may briefly miss those rows, never see them twice; a crash anywhere
        is settled by :meth:`recover` like an export. Returns the number of parts removed.
        """
        self._rewrite_dirty()
        removed = 0
        for group in plan_compaction(self.state.parts(), target_rows):
            removed += self._merge(group)
        return removed

    def _merge(self, group: list[PartRecord]) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        part_id = self.state.allocate_part()
        name = part_name(part_id)
        tmp = self.dir / temp_name(name)
        written = 0
        with pq.ParquetWriter(tmp, self.schema) as writer:
            for old in group:
                with pq.ParquetFile(self.dir / old.name) as pf:
                    for batch in pf.iter_batches(batch_size=WRITE_CHUNK):
                        ids = batch.column("id").to_pylist()
                        members = self.state.part_members(old.part_id, ids)
                        kept = batch.filter(pa.array([i in members for i in ids]))
                        writer.write_table(pa.Table.from_batches([kept]).cast(self.schema))
                        written += kept.num_rows
        _fsync_file(tmp)
        self._step("merge-written")
        fresh = self.state.merge_parts(part_id, name, [p.part_id for p in group], written)
        for old in group:
            (self.dir / old.name).unlink()
        fsync_dir(self.dir)
        self._step("merge-unlinked")
        os.replace(tmp, self.dir / name)
        fsync_dir(self.dir)
        self.state.finalize_part(part_id)
        if not fresh:
            self._rewrite_dirty()
        return len(group)

    # -- rows the manifest no longer has --

    def retire_removed(self) -> int:
        """Make ``results/`` hold the rows of the current manifest only.

        The answers of rows that left the manifest (as of the last complete sync) are written to
        ``OUT/removed/removed.parquet`` (rebuilt from the state, so a crash anywhere is settled by
        the next call), then taken out of their parts (dirty, rewritten without them). A row that
        comes back into the manifest is exported again from the state, nothing resent. Returns
        the number of rows taken out of ``results/``.
        """
        current = self.state.current_pass()
        if current is None:
            return 0
        if self.state.get_meta(REMOVED_META_KEY) != current:
            self._write_removed()
            self.state.set_meta(REMOVED_META_KEY, current)
        moved = self.state.unassign_removed() if self.state.count_removed_in_parts() else 0
        if moved:
            self._rewrite_dirty()
        return moved

    def _write_removed(self) -> None:
        import pyarrow.parquet as pq

        folder = self.out_dir / REMOVED_DIR
        final = folder / REMOVED_FILE
        writer: pq.ParquetWriter | None = None
        after = 0
        tmp = folder / temp_name(REMOVED_FILE)
        try:
            while page := self.state.removed_results(after, WRITE_CHUNK):
                if writer is None:
                    folder.mkdir(exist_ok=True)
                    writer = pq.ParquetWriter(tmp, self.schema)
                writer.write_table(self._table([Result.from_json(js) for _, js in page]))
                after = page[-1][0]
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            if final.exists():  # every removed row came back
                final.unlink()
                fsync_dir(folder)
            return
        _fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(folder)

    # -- crash recovery --

    @_exclusive
    def recover(self) -> RecoverReport:
        """Settle whatever a crash left in ``results/``; run once at start-up, before exporting."""
        report = RecoverReport()
        recorded = {p.name: p for p in self.state.parts()}
        for tmp in sorted(self.dir.glob(".part-*.parquet.tmp")):
            name = tmp.name[1 : -len(".tmp")]
            if name not in recorded or (self.dir / name).exists():
                tmp.unlink()  # never committed, or an interrupted rewrite of a part still in place
                report.deleted_files.append(tmp.name)
        for final in sorted(self.dir.glob("part-*.parquet")):
            if final.name not in recorded:
                # Its transaction never became durable: the rows are unexported in the state.
                final.unlink()
                report.deleted_files.append(final.name)
        to_rename: list[PartRecord] = []
        for name, part in recorded.items():
            if (self.dir / name).exists():
                if part.state == "pending":
                    self.state.finalize_part(part.part_id)
            elif (self.dir / temp_name(name)).exists():
                to_rename.append(part)
            else:
                report.requeued_rows += self.state.drop_part(part.part_id)
                report.dropped_parts.append(name)
        report.rewritten += self._rewrite_dirty()
        for part in to_rename:
            os.replace(self.dir / temp_name(part.name), self.dir / part.name)
            self.state.finalize_part(part.part_id)
            report.renamed.append(part.name)
        fsync_dir(self.dir)
        report.rewritten += self._rewrite_dirty()
        return report


def read_results(out_dir: str | Path) -> pa.Table:
    """Every result part under ``OUT/results`` as one table (empty, with the base schema, if none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(out_dir) / RESULTS_DIR
    for _attempt in range(5):
        paths = sorted(folder.glob("part-*.parquet"))
        try:
            tables = [pq.ParquetFile(p).read() for p in paths]
        except FileNotFoundError:
            continue  # a part was rewritten away between listing and reading: list again
        if not tables:
            return result_schema().empty_table()
        return pa.concat_tables(tables, promote_options="default")
    raise SinkError(f"{folder}: parts kept changing while being read")
