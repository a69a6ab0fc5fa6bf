"""batcher from Python: :func:`run`, :func:`estimate`, :func:`prepare_image` and
:func:`make_report` (exported by ``batcher/__init__.py``), for notebooks and for other engines to
call.

The three do what ``batcher run``, ``batcher estimate`` and ``batcher prepare`` do, through the same
code, but print nothing unless asked and never exit: a refusal raises a :class:`JobError`
(:mod:`batcher.errors`: a ``ConfigError``, ``ManifestError``, ``AlreadyRunning``... as it is, each a
``JobError``), carrying the one-line message the command would print and the exit code it would
exit with; a run that ran returns a :class:`RunSummary` whose ``exit_code`` is the command's.

A job is a path to its TOML file or a loaded :class:`batcher.config.JobConfig` (:func:`load_job`),
possibly changed in memory (``job.model_copy(update=...)``): a loaded job runs as it is, its file is
not read again (relative paths in it still resolve against the file's folder).

Where an event loop already runs in the calling thread (a notebook), the work goes to a worker
thread with a loop of its own and the caller waits for it; signals are then left to the caller
(only the main thread can watch them: see :mod:`batcher.core.signals`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO, TypeVar

from batcher.errors import JobError
from batcher.exits import EXIT_CONFIG

if TYPE_CHECKING:
    from batcher.config import JobConfig
    from batcher.estimator import Estimate
    from batcher.images.prepare import PreparedImage
    from batcher.models import ModelProfile
    from batcher.report.build import ReportStats

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RunSummary:
    """How a job stands once :func:`run` returns.

    The counts are the job's, not only this run's: the rows of its current manifest by status, as
    ``batcher status`` shows them (a second run with nothing to do reports the same ``ok``), and the
    tokens and cost of every run of the job so far.
    """

    #: what ``batcher run`` would exit with: 0 all rows ok, 3 some rows ended in error, 5 the budget
    #: stopped the run, 75 not finished (rows left for the next run or in live batches), 1 a fatal
    #: answer mid-run (401, the spend limit: what was answered is kept), 2 the manifest turned out
    #: unusable mid-run
    exit_code: int
    #: the output folder and its Parquet results (``batcher.sink.read_results(out)`` reads them)
    out: Path
    results: Path
    #: rows of the current manifest
    rows: int
    ok: int
    #: rows that ended in a final error (``--retry-errors``: ``retry_errors=True`` sends them again)
    errors: int
    #: rows neither ok nor in error: pending, left for the next run, or in live batches
    left: int
    cost_usd: float
    input_tokens: int
    output_tokens: int
    #: rows by status (``ok``, ``error``, ``pending``...) and errors by type
    by_status: Mapping[str, int]
    #: ``refusal``, ``max_tokens`` and ``schema_mismatch`` (structured output) among them, by name
    errors_by_type: Mapping[str, int]
    #: structured output: answers asked again because their JSON did not fit the schema (all runs)
    reasks: int = 0
    #: prompt cache (all runs): answers that read the cached prefix, of those that read or wrote
    #: it, their ratio (None: no answer used the cache), the tokens read and written, and what the
    #: cache saved in dollars (cost with every cached token as plain input, less the cost)
    cache_reads: int = 0
    cache_uses: int = 0
    cache_hit_rate: float | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_saved_usd: float = 0.0

    @property
    def done(self) -> bool:
        """Every row answered ok."""
        return self.exit_code == 0


def load_job(path: str | os.PathLike[str]) -> JobConfig:
    """The job file read and checked (not yet against its model); raises a :class:`JobError`
    (``batcher.config.ConfigError``, exit code 2)."""
    from batcher.config import load_job as load

    return load(Path(path))


def run(
    job: str | os.PathLike[str] | JobConfig,
    *,
    out: str | os.PathLike[str] | None = None,
    retry_errors: bool = False,
    redo_changed: bool = False,
    progress: TextIO | None = None,
    engine: Literal["local", "ray"] | None = None,
    ray_address: str | None = None,
) -> RunSummary:
    """Run a job to the end, or as far as it goes (resuming where the last run stopped), like
    ``batcher run JOB``; returns how the job stands after it.

    ``out`` overrides the job's output folder; ``engine`` and ``ray_address`` its ``[run] engine``
    and ``[ray] address`` (``engine="ray"``: the requests run on a Ray cluster). ``progress``:
    None runs quietly; a text stream (``sys.stderr``) gets the progress, summary and ``results:``
    lines the command writes.
    Raises :class:`JobError` for a refusal (nothing sent) or a fatal stop.
    """
    from batcher.commands.run import StreamNotices
    from batcher.core.notices import QUIET
    from batcher.runner import RunRequest, execute

    loaded = _loaded(job)
    request = RunRequest(
        job_path=loaded.path,
        job=loaded,
        out=Path(out) if out is not None else None,
        retry_errors=retry_errors,
        redo_changed=redo_changed,
        engine=engine,
        ray_address=ray_address,
        notices=QUIET if progress is None else StreamNotices(progress, progress),
    )
    # A refusal is the runner's RunRefused, a JobError with the command's message and exit code.
    code = _off_the_loop(lambda: execute(request))
    return _summary(loaded.output_dir(request.out), code)


def estimate(job: str | os.PathLike[str] | JobConfig, *, exact_sample: int = 0) -> Estimate:
    """What a job will cost and take, like ``batcher estimate JOB`` (its ``--json`` is
    ``result.to_json()``); nothing is sent unless ``exact_sample`` > 0, which counts that many rows
    through the API's free ``count_tokens`` (needs the key) and calibrates the text estimate.
    Raises :class:`JobError` (2: the job or manifest; 1: the sample could not be counted)."""
    from batcher.estimator import estimate_job, job_profile

    # ConfigError and ManifestError (2), EstimateError (1): JobErrors carrying their exit codes.
    loaded = _loaded(job)
    profile = job_profile(loaded)
    return _off_the_loop(lambda: estimate_job(loaded, profile, exact_sample_rows=exact_sample))


def prepare_image(
    source: str | os.PathLike[str] | bytes,
    *,
    model: str | ModelProfile,
    images_in_request: int = 1,
    max_edge: int | None = None,
    max_image_tokens: int | None = None,
    max_b64_bytes: int | None = None,
    allow_truncated: bool = False,
    jpeg_quality: int | None = None,
    max_pixels: int | None = None,
) -> PreparedImage:
    """One image prepared as a job would send it to ``model`` (an id or alias from ``batcher
    models``, or a profile): upright, at the model's native size or below the caps given, as the
    bytes, media type and token count the request would carry.

    It runs in this process, without the worker pool's time and memory bounds (Pillow's pixel
    limit, ``max_pixels``, still holds). A file that cannot be sent raises
    :class:`batcher.images.errors.ImageError` (its ``error_type`` is the results' ``error_type``);
    an unknown model or an option the model cannot take raises :class:`JobError` (exit code 2).
    """
    from batcher.images.prepare import prepare_file
    from batcher.images.sizing import ImageOptions, check_options
    from batcher.models import ModelProfile, load_registry

    default = ImageOptions()
    options = ImageOptions(
        max_edge=max_edge,
        max_image_tokens=max_image_tokens,
        max_b64_bytes=default.max_b64_bytes if max_b64_bytes is None else max_b64_bytes,
        allow_truncated=allow_truncated,
        jpeg_quality=default.jpeg_quality if jpeg_quality is None else jpeg_quality,
        max_pixels=default.max_pixels if max_pixels is None else max_pixels,
    )
    # ModelConfigError and ImageConfigError are JobErrors with exit code 2 already.
    profile = model if isinstance(model, ModelProfile) else load_registry().get(model)
    if profile is None:
        raise JobError(f"unknown model {model!r} (see `batcher models`)", EXIT_CONFIG)
    if not 1 <= images_in_request <= profile.images_per_request:
        raise JobError(
            f"images_in_request: {images_in_request} is not between 1 and {profile.id}'s "
            f"limit of {profile.images_per_request} images a request",
            EXIT_CONFIG,
        )
    check_options(profile, options)
    data = source if isinstance(source, bytes) else os.fspath(source)
    return prepare_file(data, profile, options, images_in_request)


def make_report(
    out: str | os.PathLike[str],
    *,
    dest: str | os.PathLike[str] | None = None,
    max_cards: int = 2000,
    thumb_px: int = 256,
    workers: int | None = None,
) -> ReportStats:
    """``batcher report OUT``: one self-contained HTML page over the job's results at ``dest``
    (default ``OUT/report.html``); returns what was written (``path``, ``cards``, ``results``,
    ``sampled``, ``bytes``, ``seconds``). Thumbnails are made in ``workers`` image worker processes
    (default: one per core). Raises :class:`JobError` (a ``ReportError``: 2, not a job's output
    folder; 1, the page could not be written). Named ``make_report``: ``batcher.report`` is the
    package that makes the page."""
    from batcher.report.build import ReportError, ReportOptions, write_report

    if max_cards < 0 or thumb_px < 1:
        raise ReportError(f"max_cards must be 0 or more and thumb_px 1 or more, got {max_cards}, {thumb_px}")
    options = ReportOptions(max_cards=max_cards, thumb_px=thumb_px, workers=workers)
    page = Path(dest) if dest is not None else None
    return _off_the_loop(lambda: write_report(Path(out), page, options))


# --- helpers -------------------------------------------------------------------------------------


def _loaded(job: str | os.PathLike[str] | JobConfig) -> JobConfig:
    from batcher.config import JobConfig

    return job if isinstance(job, JobConfig) else load_job(job)


def _summary(out_dir: Path, code: int) -> RunSummary:
    """The job's standing from its state, the one source ``batcher status`` reads too."""
    from batcher.state import JobState

    with JobState.open(out_dir) as state:
        s = state.summary()
    ok = s.by_status.get("ok", 0)
    errors = s.by_status.get("error", 0)
    return RunSummary(
        exit_code=code,
        out=out_dir,
        results=out_dir / "results",
        rows=s.rows,
        ok=ok,
        errors=errors,
        left=s.rows - ok - errors,
        cost_usd=s.cost_usd,
        input_tokens=s.input_tokens,
        output_tokens=s.output_tokens,
        by_status=dict(s.by_status),
        errors_by_type=dict(s.errors_by_type),
        reasks=s.reasks,
        cache_reads=s.cache_reads,
        cache_uses=s.cache_uses,
        cache_hit_rate=s.cache_hit_rate,
        cache_read_tokens=s.cache_read_input_tokens,
        cache_write_tokens=s.cache_creation_input_tokens,
        cache_saved_usd=s.cache_saved_usd,
    )


def _event_loop_running() -> bool:
    """Whether this thread runs an event loop (a notebook's asyncio, or trio), where ``anyio.run``
    refuses to start another one: asyncio's own word, then sniffio's where it is installed (anyio
    no longer requires it)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return True
    try:
        import sniffio
    except ImportError:
        return False
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


def _off_the_loop(work: Callable[[], T]) -> T:
    """``work()`` here, or in a worker thread (its own event loop, no signal watcher) when this
    thread runs an event loop; the caller waits either way. Interrupted while waiting, the caller
    gets its ``KeyboardInterrupt`` at once, and the run goes on in its thread until it ends."""
    if not _event_loop_running():
        return work()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
    try:
        return pool.submit(work).result()
    finally:
        pool.shutdown(wait=False)
