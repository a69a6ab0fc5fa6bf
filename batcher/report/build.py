"""The report's data: a :class:`Header` over the whole job and a stream of :class:`Card`\\ s.

Streamed, so a million-row job takes the memory of a thousand-row one:

* The Parquet parts under ``OUT/results`` are opened once (each reader keeps its file, so a run
  that rewrites a part meanwhile does not change what this report reads) and scanned by batches of
  only the columns a pass needs, never as one table.
* Pass 1 (``status``, ``latency_s``, ``cost_usd``): the rows by status and each figure's range.
  Pass 2 (the same columns): the histograms (:func:`histogram_edges`, :func:`count_into`) and the
  positions of the rows the page shows (:func:`plan_sample`: at most ``max_cards`` ints are held,
  never the ids of every row).
* Pass 3: only the row groups that hold a chosen row are read with the card's columns, the chosen
  rows taken from them, in results order; their thumbnails are made in the image pool a window of
  cards ahead (:data:`WINDOW_PER_WORKER` x workers), so the page is written while later images are
  still being made.
* The header's figures are the job state's (:meth:`batcher.state.JobState.summary`, as
  ``batcher status`` shows them): rows by status, errors and warnings by type, tokens, cache, spend,
  time; plus how many results the parts hold and how many cards the page holds.

A folder with no job state (missing, empty, not an output folder) is a :class:`ReportError` (exit
2). A job with no finished rows yet makes a page with its header and no cards.

:func:`write_report` is the synchronous entry point (``batcher report``, ``batcher.report``): it
builds, renders to a temp file beside ``dest`` and renames it into place, so a crash leaves no half
page under the final name. Library code: it prints nothing.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from batcher.errors import JobError
from batcher.exits import EXIT_CONFIG, EXIT_FATAL
from batcher.report.model import Card, Header, Histogram, Thumb

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from anyio.streams.memory import MemoryObjectReceiveStream

    from batcher.images.sizing import ImageOptions
    from batcher.images.thumbnail import Thumbnail
    from batcher.state import Summary

#: Bins of each header histogram.
HISTOGRAM_BINS = 20
#: Rows per batch in the light passes (a few columns: tens of KB a batch).
SCAN_BATCH = 8192
#: Cards whose thumbnails may be in the making at once, per image worker.
WINDOW_PER_WORKER = 2
#: An output field's value is cut to this many characters on a card (the raw JSON is in ``text``).
FIELD_CHARS = 300
#: Why a URL image has no thumbnail (the report reads local files only; nothing is downloaded).
URL_NOT_FETCHED = "not fetched: URL"
#: The result columns a card shows, as named in the Parquet parts.
CARD_COLUMNS: tuple[str, ...] = (
    "id",
    "status",
    "text",
    "error_type",
    "error_message",
    "warnings",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cost_usd",
    "latency_s",
    "attempts",
    "images",
)
_LIGHT_COLUMNS = ["status", "latency_s", "cost_usd"]


class ReportError(JobError):
    """The report cannot be made: not an output folder (exit 2), or the page cannot be written (1)."""

    exit_code = EXIT_CONFIG


@dataclass(frozen=True, slots=True)
class ReportOptions:
    """``batcher report``'s options."""

    #: cards at most on the page; past it, a sample (:func:`plan_sample`)
    max_cards: int = 2000
    #: a thumbnail's long edge in pixels
    thumb_px: int = 256
    #: image workers making thumbnails (None: one per core)
    workers: int | None = None


@dataclass(frozen=True, slots=True)
class ReportStats:
    """What :func:`write_report` wrote."""

    #: the page
    path: Path
    #: cards on the page, and results rows in the Parquet parts (more: the cards are a sample)
    cards: int
    results: int
    sampled: bool
    #: the page's size
    bytes: int
    #: wall time of the whole report
    seconds: float


class Thumbnailer(Protocol):
    """Makes a thumbnail within the time and memory bounds of its workers (the image pool)."""

    @property
    def workers(self) -> int: ...

    async def thumbnail(
        self, source: str, thumb_px: int, options: ImageOptions | None = None
    ) -> Thumbnail: ...


#: Writes the page: :func:`batcher.report.render.render`'s signature.
Renderer = Callable[[Header, Iterable[Card], TextIO], None]


# --- pure decisions ------------------------------------------------------------------------------


def spread(n: int, k: int) -> tuple[int, ...]:
    """``k`` of the ordinals ``0..n-1`` spread evenly from first to last (a stride; all when
    ``k >= n``). Deterministic, ascending, distinct."""
    if k >= n:
        return tuple(range(n))
    if k <= 0:
        return ()
    return tuple(i * n // k for i in range(k))


@dataclass(frozen=True, slots=True)
class SamplePlan:
    """Which rows the page shows, as ordinals among the error rows and among the ok rows."""

    errors: tuple[int, ...]
    ok: tuple[int, ...]

    @property
    def cards(self) -> int:
        return len(self.errors) + len(self.ok)


def plan_sample(errors: int, ok: int, max_cards: int) -> SamplePlan:
    """Every error row first, up to ``max_cards`` (spread over the job when there are more); then
    ok rows spread evenly over the whole job in the cards left. Holds at most ``max_cards`` ints."""
    if max_cards < 0:
        raise ValueError(f"max_cards must not be negative, got {max_cards}")
    chosen_errors = spread(errors, min(errors, max_cards))
    return SamplePlan(chosen_errors, spread(ok, max_cards - len(chosen_errors)))


def histogram_edges(low: float, high: float, bins: int = HISTOGRAM_BINS) -> tuple[float, ...]:
    """``bins + 1`` evenly spaced edges from ``low`` to ``high``; when every value is the same
    (``low == high``) one bin whose two edges are equal."""
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        raise ValueError(f"no histogram over [{low}, {high}]")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if high == low:
        return (low, high)
    width = (high - low) / bins
    return (*(low + i * width for i in range(bins)), high)


def bin_of(value: float, edges: Sequence[float]) -> int:
    """The bin of ``value`` (bins are ``[edge, next)``, the last one closed); clipped to the ends."""
    bins = len(edges) - 1
    if bins <= 1 or edges[-1] == edges[0]:
        return 0
    index = int((value - edges[0]) / (edges[-1] - edges[0]) * bins)
    return min(max(index, 0), bins - 1)


def count_into(counts: list[int], values: pa.Array | pa.ChunkedArray, edges: Sequence[float]) -> None:
    """Add ``values`` (nulls and non-finite values skipped) to ``counts``, binned as :func:`bin_of`
    does, vectorised with Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    valid = values.filter(pc.is_finite(values))  # drops nulls too (is_finite of null is null)
    if len(valid) == 0:
        return
    bins = len(edges) - 1
    if bins <= 1 or edges[-1] == edges[0]:
        counts[0] += len(valid)
        return
    scale = bins / (edges[-1] - edges[0])
    raw = pc.floor(pc.multiply(pc.subtract(valid, pa.scalar(edges[0])), pa.scalar(scale)))
    index = pc.max_element_wise(pc.min_element_wise(raw, pa.scalar(float(bins - 1))), pa.scalar(0.0))
    tally = pc.value_counts(pc.cast(index, pa.int64()))
    for item in tally.to_pylist():
        counts[int(item["values"])] += int(item["counts"])


def show_value(value: object) -> str:
    """An output field's value as short text: a list of plain values joined with ", ", anything
    holding an object as compact JSON, ``true``/``false``, ``""`` for null; cut to
    :data:`FIELD_CHARS` characters."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, float):
        text = format(value, "g") if math.isfinite(value) else str(value)
    elif isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        text = ", ".join(show_value(v) for v in value)
    elif isinstance(value, int):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text if len(text) <= FIELD_CHARS else text[: FIELD_CHARS - 1] + "\u2026"


def output_fields(row: Mapping[str, object], columns: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """A card's ``[output]`` fields in schema order: one per output column, or the keys of the
    struct column ``data`` (``columns = "struct"``). Error rows (every output column null): none."""
    if list(columns) == ["data"]:
        data = row.get("data")
        return tuple((str(k), show_value(v)) for k, v in data.items()) if isinstance(data, dict) else ()
    if all(row.get(name) is None for name in columns):
        return ()
    return tuple((name, show_value(row.get(name))) for name in columns)


def missing_reason(error_type: str, message: str, source: str) -> str:
    """Why an image has no thumbnail: its error type and the message without the file's name (the
    card names the source itself)."""
    prefix = f"{source}: "
    return f"{error_type}: {message[len(prefix) :] if message.startswith(prefix) else message}"


# --- reading the results -------------------------------------------------------------------------


@dataclass(slots=True)
class _Parts:
    """The Parquet parts as opened at the start: a consistent snapshot for every pass."""

    files: list[pq.ParquetFile]

    @classmethod
    def open(cls, folder: Path) -> _Parts:
        import pyarrow.parquet as pq

        for _attempt in range(5):
            paths = sorted(folder.glob("part-*.parquet"))
            files: list[pq.ParquetFile] = []
            try:
                for path in paths:
                    files.append(pq.ParquetFile(path, pre_buffer=False))
            except FileNotFoundError:  # a part rewritten away between listing and opening
                for opened in files:
                    opened.close()
                continue
            return cls(files)
        raise ReportError(f"{folder}: the results kept changing while being opened", exit_code=EXIT_FATAL)

    def close(self) -> None:
        for file in self.files:
            file.close()

    def light(self) -> Iterator[tuple[int, int, pa.RecordBatch]]:
        """``(part, first row's position in the part, batch)`` of the light columns, in order."""
        for index, file in enumerate(self.files):
            offset = 0
            for batch in file.iter_batches(batch_size=SCAN_BATCH, columns=_LIGHT_COLUMNS, use_threads=False):
                yield index, offset, batch
                offset += batch.num_rows

    def columns(self, index: int) -> list[str]:
        return list(self.files[index].schema_arrow.names)


@dataclass(slots=True)
class _Plan:
    """What passes 1 and 2 found: the header, and the chosen rows' positions by part."""

    header: Header
    chosen: dict[int, list[int]]
    output_columns: list[str]
    parts: _Parts


def _is_ok(batch: pa.RecordBatch) -> pa.Array:
    import pyarrow.compute as pc

    return pc.fill_null(pc.equal(batch.column("status"), "ok"), False)


def _range(
    batch: pa.RecordBatch, name: str, current: tuple[float, float] | None
) -> tuple[float, float] | None:
    import pyarrow.compute as pc

    column = batch.column(name)
    finite = column.filter(pc.is_finite(column))
    if len(finite) == 0:
        return current
    pair = pc.min_max(finite).as_py()
    low, high = float(pair["min"]), float(pair["max"])
    return (low, high) if current is None else (min(low, current[0]), max(high, current[1]))


def _figures(parts: _Parts) -> tuple[int, int, dict[str, tuple[float, float] | None]]:
    """Pass 1: error and ok rows, and the range of each histogram's figure."""
    import pyarrow.compute as pc

    errors = ok = 0
    ranges: dict[str, tuple[float, float] | None] = {"latency_s": None, "cost_usd": None}
    for _index, _offset, batch in parts.light():
        n_ok = int(pc.sum(_is_ok(batch)).as_py() or 0)
        ok += n_ok
        errors += batch.num_rows - n_ok
        for name in ranges:
            ranges[name] = _range(batch, name, ranges[name])
    return errors, ok, ranges


def _picked(ordinals: tuple[int, ...], seen: int, positions: pa.Array) -> list[int]:
    """The batch positions of the chosen ordinals among ``positions`` (the ok or error rows of a
    batch whose first such row has ordinal ``seen``)."""
    start = bisect.bisect_left(ordinals, seen)
    stop = bisect.bisect_left(ordinals, seen + len(positions))
    return [positions[o - seen].as_py() for o in ordinals[start:stop]]


_HISTOGRAMS = (("latency_s", "latency", "s"), ("cost_usd", "cost per row", "USD"))


def _locate(
    parts: _Parts, sample: SamplePlan, ranges: Mapping[str, tuple[float, float] | None]
) -> tuple[dict[int, list[int]], tuple[Histogram, ...]]:
    """Pass 2: the chosen rows' positions by part, and the histograms."""
    import pyarrow.compute as pc

    edges = {name: histogram_edges(*r) for name, r in ranges.items() if r is not None}
    counts = {name: [0] * (len(e) - 1) for name, e in edges.items()}
    chosen: dict[int, list[int]] = {}
    errors_seen = ok_seen = 0
    for index, offset, batch in parts.light():
        for name, bin_edges in edges.items():
            count_into(counts[name], batch.column(name), bin_edges)
        mask = _is_ok(batch)
        ok_rows = pc.indices_nonzero(mask)
        error_rows = pc.indices_nonzero(pc.invert(mask))
        here = _picked(sample.ok, ok_seen, ok_rows) + _picked(sample.errors, errors_seen, error_rows)
        if here:
            chosen.setdefault(index, []).extend(offset + p for p in here)
        ok_seen += len(ok_rows)
        errors_seen += len(error_rows)
    for positions in chosen.values():
        positions.sort()
    histograms = tuple(
        Histogram(label, unit, edges[name], tuple(counts[name]))
        for name, label, unit in _HISTOGRAMS
        if name in edges
    )
    return chosen, histograms


def check_out_dir(out_dir: Path) -> None:
    """Raise :class:`ReportError` (exit 2) unless ``out_dir`` is a job's output folder."""
    from batcher.state import STATE_FILE

    if not (out_dir / STATE_FILE).is_file():
        raise ReportError(f"{out_dir}: no job state here (is it a job's output folder?)")


def _read_state(out_dir: Path) -> tuple[Summary, list[str]]:
    """The job's summary, and its output columns (none without ``[output]``)."""
    from batcher.sink import OUTPUT_META_KEY
    from batcher.state import JobState

    check_out_dir(out_dir)
    state = JobState.open(out_dir)
    try:
        summary = state.summary()
        output = state.get_meta(OUTPUT_META_KEY) or {}
    finally:
        state.close()
    return summary, [str(column[0]) for column in output.get("columns") or []]


def _plan(out_dir: Path, options: ReportOptions) -> _Plan:
    """Passes 1 and 2, and the state's figures (in a worker thread: all disk and CPU)."""
    from batcher.sink import RESULTS_DIR

    if options.max_cards < 0:
        raise ReportError(f"max_cards must not be negative, got {options.max_cards}")
    summary, output_columns = _read_state(out_dir)
    parts = _Parts.open(out_dir / RESULTS_DIR)
    try:
        errors, ok, ranges = _figures(parts)
        sample = plan_sample(errors, ok, options.max_cards)
        chosen, histograms = _locate(parts, sample, ranges)
    except BaseException:
        parts.close()
        raise
    s = summary
    header = Header(
        job=out_dir.resolve().name,
        out_dir=str(out_dir),
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        rows=s.rows,
        by_status=dict(s.by_status),
        errors_by_type=dict(s.errors_by_type),
        warnings_by_type=dict(s.warnings),
        input_tokens=s.input_tokens,
        output_tokens=s.output_tokens,
        cache_read_tokens=s.cache_read_input_tokens,
        cache_write_tokens=s.cache_creation_input_tokens,
        cache_hit_rate=s.cache_hit_rate,
        cost_usd=s.cost_usd,
        time_spent_s=s.time_spent_s,
        results=errors + ok,
        cards=sample.cards,
        histograms=histograms,
    )
    return _Plan(header, chosen, output_columns, parts)


# --- pass 3: the cards ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    """A chosen row's columns, before its thumbnails."""

    values: dict[str, object]
    sources: list[str] = field(default_factory=list)


def _rows_of_group(parts: _Parts, index: int, group: int, local: list[int], columns: list[str]) -> list[_Row]:
    """The chosen rows of one row group, with only the card's columns (in a worker thread)."""
    import pyarrow as pa

    table = parts.files[index].read_row_group(group, columns=columns, use_threads=False)
    rows = table.take(pa.array(local, type=pa.int64())).to_pylist()
    out = []
    for values in rows:
        images = values.get("images") or []
        sources = [str(img["source"]) for img in images if isinstance(img, dict) and img.get("source")]
        out.append(_Row(values, sources))
    return out


def _groups(parts: _Parts, chosen: Mapping[int, list[int]]) -> Iterator[tuple[int, int, list[int]]]:
    """``(part, row group, positions in the group)`` of every group that holds a chosen row, in order."""
    for index in sorted(chosen):
        positions = chosen[index]
        metadata = parts.files[index].metadata
        start, cursor = 0, 0
        for group in range(metadata.num_row_groups):
            end = start + metadata.row_group(group).num_rows
            stop = bisect.bisect_left(positions, end, lo=cursor)
            if stop > cursor:
                yield index, group, [p - start for p in positions[cursor:stop]]
            cursor, start = stop, end


def _card(row: _Row, thumbs: tuple[Thumb, ...], output_columns: Sequence[str]) -> Card:
    v = row.values

    def number(name: str) -> int | None:
        value = v.get(name)
        return int(value) if isinstance(value, int) else None

    def real(name: str) -> float | None:
        value = v.get(name)
        return float(value) if isinstance(value, int | float) else None

    warnings = v.get("warnings")
    return Card(
        id=str(v.get("id")),
        status=str(v.get("status")),
        text=text if isinstance(text := v.get("text"), str) else None,
        fields=output_fields(v, output_columns),
        error_type=str(v["error_type"]) if v.get("error_type") is not None else None,
        error_message=str(v["error_message"]) if v.get("error_message") is not None else None,
        warnings=tuple(str(w) for w in warnings) if isinstance(warnings, list) else (),
        input_tokens=number("input_tokens"),
        output_tokens=number("output_tokens"),
        cache_read_tokens=number("cache_read_input_tokens"),
        cache_write_tokens=number("cache_creation_input_tokens"),
        cost_usd=real("cost_usd"),
        latency_s=real("latency_s"),
        attempts=number("attempts"),
        thumbs=thumbs,
    )


async def _thumb(pool: Thumbnailer, source: str, thumb_px: int) -> Thumb:
    from batcher import urls
    from batcher.images.errors import ImageError

    if urls.is_url(source):
        return Thumb(source, None, missing=URL_NOT_FETCHED)
    try:
        made = await pool.thumbnail(source, thumb_px)
    except ImageError as exc:
        return Thumb(source, None, missing=missing_reason(exc.error_type, exc.message, source))
    return Thumb(source, made.data_uri(), made.width, made.height)


async def _cards(plan: _Plan, options: ReportOptions, pool: Thumbnailer) -> AsyncIterator[Card]:
    """Pass 3: the chosen rows in results order, each with its thumbnails, made a window ahead."""
    import anyio
    import anyio.to_thread

    window = max(1, WINDOW_PER_WORKER * pool.workers)
    pending: deque[tuple[_Row, list[Thumb | None], anyio.Event]] = deque()

    async def make(source_index: int, row: _Row, slots: list[Thumb | None], done: anyio.Event) -> None:
        slots[source_index] = await _thumb(pool, row.sources[source_index], options.thumb_px)
        if all(slot is not None for slot in slots):
            done.set()

    def finished(row: _Row, slots: list[Thumb | None]) -> Card:
        return _card(row, tuple(t for t in slots if t is not None), plan.output_columns)

    # Every Parquet read of this pass in one thread: Arrow's allocator keeps a heap per thread that
    # touches it, and reads hopping over the event loop's worker threads would each grow one.
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher-report-read")
    try:
        async with anyio.create_task_group() as group:
            for index, row_group, local in _groups(plan.parts, plan.chosen):
                columns = [c for c in (*CARD_COLUMNS, *plan.output_columns) if c in plan.parts.columns(index)]
                read = reader.submit(_rows_of_group, plan.parts, index, row_group, local, columns)
                rows = await anyio.to_thread.run_sync(read.result)
                for row in rows:
                    slots: list[Thumb | None] = [None] * len(row.sources)
                    done = anyio.Event()
                    if not row.sources:
                        done.set()
                    for i in range(len(row.sources)):
                        group.start_soon(make, i, row, slots, done)
                    pending.append((row, slots, done))
                    while len(pending) > window:
                        head, head_slots, head_done = pending.popleft()
                        await head_done.wait()
                        yield finished(head, head_slots)
            while pending:
                head, head_slots, head_done = pending.popleft()
                await head_done.wait()
                yield finished(head, head_slots)
    except* GeneratorExit:
        pass  # closed early (aclose): the task group has cancelled the thumbnails in flight
    finally:
        reader.shutdown(wait=True)
        plan.parts.close()


async def build_report(
    out_dir: Path, options: ReportOptions, pool: Thumbnailer
) -> tuple[Header, AsyncIterator[Card]]:
    """The page's header (passes 1 and 2, in a worker thread) and its cards (pass 3, streamed:
    iterate them in one task, to the end or ``aclose()``). Raises :class:`ReportError`."""
    import anyio.to_thread

    plan = await anyio.to_thread.run_sync(_plan, Path(out_dir), options)
    return plan.header, _cards(plan, options, pool)


# --- the page ------------------------------------------------------------------------------------


def _default_renderer() -> Renderer:
    from batcher.report.render import render

    return render


def _blocking_cards(receive: MemoryObjectReceiveStream[Card]) -> Iterator[Card]:
    """The cards, for the renderer in its worker thread: each received from the event loop."""
    import anyio
    import anyio.from_thread

    while True:
        try:
            card = anyio.from_thread.run(receive.receive)
        except anyio.EndOfStream:
            return
        yield card


def _one_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside nested task-group errors (of several: the first job-level one, else the
    group itself)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if len(leaves) == 1:
        return leaves[0]
    # Several (image workers that all failed to start): the command's own error, said once.
    return next((leaf for leaf in reversed(leaves) if isinstance(leaf, JobError)), group)


async def _build_and_render(out_dir: Path, options: ReportOptions, renderer: Renderer, out: TextIO) -> Header:
    """:func:`_render_page`, its errors as they were raised (not wrapped in task-group errors)."""
    try:
        return await _render_page(out_dir, options, renderer, out)
    except BaseExceptionGroup as group:
        raise _one_error(group) from None


async def _render_page(out_dir: Path, options: ReportOptions, renderer: Renderer, out: TextIO) -> Header:
    import anyio
    import anyio.to_thread

    from batcher.images.pool import ImagePool

    async with ImagePool(options.workers) as pool:
        header, cards = await build_report(out_dir, options, pool)
        send, receive = anyio.create_memory_object_stream[Card](0)

        async def pump() -> None:
            async with send:
                try:
                    async for card in cards:
                        await send.send(card)
                except anyio.BrokenResourceError:  # the renderer stopped reading
                    pass
                finally:
                    if isinstance(cards, AsyncGenerator):  # its thumbnails in flight are cancelled
                        await cards.aclose()

        async with anyio.create_task_group() as group:
            group.start_soon(pump)
            # The renderer (CPU, and the file) runs in a worker thread: the loop only makes cards.
            with receive:
                await anyio.to_thread.run_sync(renderer, header, _blocking_cards(receive), out)
    return header


def write_report(
    out_dir: Path,
    dest: Path | None = None,
    options: ReportOptions | None = None,
    *,
    renderer: Renderer | None = None,
) -> ReportStats:
    """Make the page for ``out_dir`` at ``dest`` (default ``OUT/report.html``): build, render to a
    temp file beside it, rename into place. ``renderer`` defaults to
    :func:`batcher.report.render.render`. Raises :class:`ReportError`."""
    import anyio

    started = time.monotonic()
    out_dir = Path(out_dir)
    options = options or ReportOptions()
    dest = Path(dest) if dest is not None else out_dir / "report.html"
    check_out_dir(out_dir)
    render = renderer or _default_renderer()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            header = anyio.run(_build_and_render, out_dir, options, render, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(
            f"{dest}: cannot write the report: {exc.strerror or exc}", exit_code=EXIT_FATAL
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ReportStats(
        path=dest,
        cards=header.cards,
        results=header.results,
        sampled=header.sampled,
        bytes=dest.stat().st_size,
        seconds=time.monotonic() - started,
    )
