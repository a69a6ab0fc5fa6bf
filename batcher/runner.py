"""``batcher run``: from a job file to a finished (or resumable) output folder.

The order matters and is the contract: everything that can be refused is refused before anything
is sent (job file, model, manifest, key, the model's own answer from the Models API, duplicate
ids); only then does the pipeline start. Exit codes: :mod:`batcher.exits` (also in README).

Nothing here prints: what a run has to say goes to the request's
:class:`~batcher.core.notices.Notices` (``batcher run`` writes them to stderr and stdout:
:mod:`batcher.commands.run`), and a refusal is raised as :class:`RunRefused`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shlex
import sqlite3
from collections.abc import Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from batcher import resume
from batcher.api import errors
from batcher.api.client import Client, MissingKeyError, settings_from_env
from batcher.budget import BUDGET_STOP, BudgetGate, gate_for
from batcher.config import ConfigError, JobConfig, check_against_model, job_registry, load_job, with_engine
from batcher.core.notices import QUIET, Notices, Say
from batcher.core.signals import watch_signals
from batcher.errors import JobError
from batcher.exits import (
    EXIT_ALREADY_RUNNING,
    EXIT_BUDGET,
    EXIT_CONFIG,
    EXIT_FATAL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_ROW_ERRORS,
)
from batcher.models import ModelProfile, ModelRegistry

if TYPE_CHECKING:
    from batcher.batches import Collector
    from batcher.core.outcomes import Counters
    from batcher.core.plan import SharedPrefix
    from batcher.core.seams import ImagePreparer
    from batcher.core.structured import StructuredOutput
    from batcher.engines.ray_driver import RayPipeline
    from batcher.files import FileUploader
    from batcher.manifest import Manifest
    from batcher.output import OutputSpec
    from batcher.pipeline import Pipeline
    from batcher.sink import Sink

    Driver = Pipeline | RayPipeline
    from batcher.state import JobState


class RunRefused(JobError):
    """A reason not to start, with the exit code it deserves; the message is one line."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)

    @property
    def code(self) -> int:
        """The exit code (``exit_code``, by its older name)."""
        return self.exit_code


@dataclass
class RunRequest:
    job_path: Path
    out: Path | None = None
    retry_errors: bool = False
    #: resend done/error rows whose content (prompt, images, request settings) changed since
    #: they were answered
    redo_changed: bool = False
    #: where the run's lines, its progress and its final results line go (none by default;
    #: ``batcher run`` gives its stderr and stdout)
    notices: Notices = QUIET
    today: dt.date | None = None
    #: a job already loaded (and perhaps changed in memory): run as it is, ``job_path`` not re-read
    job: JobConfig | None = None
    #: ``--engine`` / ``--ray-address`` over the job's ``[run] engine`` and ``[ray] address``
    engine: Literal["local", "ray"] | None = None
    ray_address: str | None = None


def execute(request: RunRequest) -> int:
    """Run a job in this thread (which must have no event loop running); returns the exit code of
    a run that ran, with its progress and summary said to ``request.notices``. A refusal, and a disk or
    database failure that stops the run, raise :class:`RunRefused` (message and exit code)."""
    try:
        job, registry, profile = _load(request)
        return anyio.run(_run_async, request, job, registry, profile)
    except (OSError, sqlite3.Error, BaseExceptionGroup) as exc:
        cause = _io_cause(exc)
        if cause is None:
            raise
        raise RunRefused(
            f"stopped: {type(cause).__name__}: {cause}; every answer recorded so far is "
            "kept, and `batcher run` again resumes",
            EXIT_FATAL,
        ) from exc


def report_line(out_dir: Path) -> str:
    """A run's last line: the command that makes its report page (``batcher report``)."""
    return f"report: batcher report {shlex.quote(str(out_dir))}"


def os_reason(exc: OSError, named: Path) -> str:
    """What went wrong, for a message that already names ``named``: the OS's reason, and the file
    it is about only when that is another one (``str(exc)`` would name the path a second time)."""
    reason = exc.strerror or str(exc)
    if exc.filename is None or Path(exc.filename) == named:
        return reason
    return f"{reason}: {exc.filename}"


def _io_cause(exc: BaseException) -> BaseException | None:
    """The disk or database error behind ``exc`` (a task group wraps it), or None."""
    if isinstance(exc, OSError | sqlite3.Error):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _io_cause(inner)
            if found is not None:
                return found
    return None


def _load(request: RunRequest) -> tuple[JobConfig, ModelRegistry, ModelProfile | None]:
    """The job, its model table, and the model's profile (None: not in the table, probe it)."""
    try:
        job = request.job if request.job is not None else load_job(request.job_path)
        job = with_engine(job, request.engine, request.ray_address)
        registry = job_registry(job)
    except ConfigError as exc:
        raise RunRefused(str(exc), EXIT_CONFIG) from None
    profile = registry.get(job.request.model)
    if profile is None:
        return job, registry, None
    today = request.today or dt.date.today()
    if profile.is_retired(today):
        raise RunRefused(
            f"{job.path}: request.model: {profile.id} retired on {profile.retires}; "
            "choose a current model (see `batcher models`)",
            EXIT_CONFIG,
        )
    _check(job, profile)
    return job, registry, profile


def _check(job: JobConfig, profile: ModelProfile) -> None:
    try:
        check_against_model(job, profile)
    except ConfigError as exc:
        raise RunRefused(str(exc), EXIT_CONFIG) from None


async def _profile_for(
    client: Client,
    job: JobConfig,
    registry: ModelRegistry,
    state: JobState,
    info: dict[str, Any],
    say: Say,
) -> ModelProfile:
    """A model missing from the table: probed once through count_tokens, kept in the job state."""
    from batcher import probe

    model_id = job.request.model
    key = f"model_probe:{model_id}"
    cached = state.get_meta(key)
    if cached is not None:
        return probe.from_meta(cached, registry)
    try:
        profile, matched = await probe.probe_model(client, model_id, info, registry)
    except errors.APIStatusError as exc:
        if model_check_verdict(exc.status, exc.api_shaped, exc.error_type) == "unknown_model":
            # Reached only without the Models API (a gateway): count_tokens gives the API's word.
            raise RunRefused(
                f"{job.path}: request.model: the API does not know {model_id!r} (unknown or retired)",
                EXIT_CONFIG,
            ) from None
        raise RunRefused(
            f"{job.path}: request.model: {model_id} is not in batcher's model table "
            f"and probing it failed: {exc}",
            EXIT_FATAL,
        ) from None
    except errors.APIError as exc:
        raise RunRefused(
            f"{job.path}: request.model: {model_id} is not in batcher's model table "
            f"and probing it failed: {exc}",
            EXIT_FATAL,
        ) from None
    state.set_meta(key, probe.to_meta(profile))
    how = "matches a known size" if matched else "unlike any known size: using the smallest"
    say(
        f"batcher: {model_id} is not in configs/models.toml; probed through count_tokens: "
        f"native {profile.native_edge} px / {profile.image_token_budget} tokens ({how}); "
        "costs at the highest known price until you set [models." + model_id + ".prices]"
    )
    return profile


def _load_output(job: JobConfig, manifest: Manifest) -> OutputSpec | None:
    """The job's [output], loaded and checked before anything is sent: its schema (one line naming
    output.schema, exit 2) and its columns against the result columns and the manifest's carried
    ones."""
    if job.output is None:
        return None
    from batcher.manifest import ManifestError
    from batcher.output import check_column_names, load_output
    from batcher.sink import RESULT_NAMES, column_names

    try:
        spec = load_output(job)
        if spec is None:
            return None
        try:
            carried = list(column_names(manifest.field_types()).values())
        except ManifestError as exc:
            raise RunRefused(f"{job.path}: {exc}", EXIT_CONFIG) from None
        check_column_names(spec, RESULT_NAMES, job, carried)
    except ConfigError as exc:
        raise RunRefused(str(exc), EXIT_CONFIG) from None
    return spec


def _structured(
    job: JobConfig, spec: OutputSpec | None, profile: ModelProfile, info: dict[str, Any], say: Say
) -> StructuredOutput | None:
    """The wire mode of the job's schema (:func:`batcher.core.structured.decide`): format, or the
    forced-tool fallback (said once), or refused naming the model (exit 2)."""
    if spec is None:
        return None
    from batcher.core.structured import decide, tool_fallback_line

    try:
        output = decide(spec, job.path, profile, info)
    except ConfigError as exc:
        raise RunRefused(str(exc), EXIT_CONFIG) from None
    if output is not None and output.mode == "tool":
        say(tool_fallback_line(profile))
    return output


def _open_manifest(job: JobConfig) -> Manifest:
    from batcher.manifest import ManifestError, job_manifest

    try:
        return job_manifest(job)
    except ManifestError as exc:
        raise RunRefused(f"{job.path}: {exc}", EXIT_CONFIG) from None


#: Statuses a gateway or proxy answers for a route it does not have.
NO_ROUTE_STATUSES = frozenset({404, 405, 501})

ModelCheck = Literal["unknown_model", "no_models_route", "error"]


def model_check_verdict(status: int, api_shaped: bool, error_type: str) -> ModelCheck:
    """What an error from ``GET /v1/models/{id}`` means. Only the API's own ``not_found_error``
    says the model is unknown or retired; a 404/405/501 in any other shape is a gateway (a proxy,
    Bedrock- or Vertex-style endpoints) without the Models API, which says nothing of the model."""
    if api_shaped and error_type == "not_found_error":
        return "unknown_model"
    if not api_shaped and status in NO_ROUTE_STATUSES:
        return "no_models_route"
    return "error"


async def _model_info(client: Client, job: JobConfig, known: ModelProfile | None, say: Say) -> dict[str, Any]:
    """``GET /v1/models/{id}`` once: the API's word on whether the model exists today ({} when
    the endpoint has no Models API: then the table's profile, or a probe, stands alone)."""
    model = job.request.model
    try:
        return await client.get_model(model)
    except errors.APIStatusError as exc:
        verdict = model_check_verdict(exc.status, exc.api_shaped, exc.error_type)
        if verdict == "unknown_model":
            raise RunRefused(
                f"{job.path}: request.model: the API does not know {model!r} (unknown or retired)",
                EXIT_CONFIG,
            ) from None
        if verdict == "error":
            raise RunRefused(f"cannot check the model with the API: {exc}", EXIT_FATAL) from None
        going_on = (
            f"going on with configs/models.toml's profile of {known.id}"
            if known is not None
            else f"{model} is not in configs/models.toml either: probing it through count_tokens"
        )
        say(
            f"batcher: warning: GET /v1/models/{model} answered HTTP {exc.status} without the API's "
            f"error shape (a gateway without the Models API?); the model is not checked with the "
            f"API, {going_on}"
        )
        return {}
    except errors.APIError as exc:
        raise RunRefused(f"cannot check the model with the API: {exc}", EXIT_FATAL) from None


def _check_model_online(job: JobConfig, info: dict[str, Any]) -> None:
    """What the Models API says the model can do, against what the job asks of it (before
    anything else is sent: a model the job cannot use is not probed either)."""
    caps = info.get("capabilities") or {}
    model = info.get("id") or job.request.model
    if _cap_off(caps, "image_input"):
        raise RunRefused(f"{job.path}: request.model: {model} does not accept images", EXIT_CONFIG)
    if job.run.mode == "batch" and _cap_off(caps, "batch"):
        raise RunRefused(f"{job.path}: run.mode: {model} is not available in the Batch API", EXIT_CONFIG)
    max_tokens = info.get("max_tokens")
    if isinstance(max_tokens, int) and job.request.max_tokens > max_tokens:
        raise RunRefused(
            f"{job.path}: request.max_tokens: {job.request.max_tokens} is above "
            f"{model}'s maximum of {max_tokens}",
            EXIT_CONFIG,
        )


def _warn_deprecated(profile: ModelProfile, say: Say) -> None:
    if profile.lifecycle == "deprecated" and profile.retires:
        say(
            f"batcher: warning: {profile.id} is deprecated and retires on {profile.retires}; "
            "requests fail after that date"
        )


def _cap_off(caps: dict[str, Any], name: str) -> bool:
    value = caps.get(name)
    if isinstance(value, dict):
        return value.get("supported") is False
    return value is False


async def _run_async(
    request: RunRequest, job: JobConfig, registry: ModelRegistry, known: ModelProfile | None
) -> int:
    # In a thread: a manifest in a bucket has its header read over the network (batcher.stores).
    manifest = await anyio.to_thread.run_sync(_open_manifest, job)
    _check_stores(job)
    _check_engine_installed(job)
    spec = _load_output(job, manifest)
    try:
        key, base_url = settings_from_env()
    except MissingKeyError as exc:
        raise RunRefused(str(exc), EXIT_FATAL) from None
    # One client for the whole run, its pool sized to the concurrency.
    async with Client(
        key, base_url, max_connections=job.run.concurrency, timeout_s=job.run.request_timeout_s
    ) as client:
        # The API's word on the model before anything is written: a refused job leaves no trace.
        info = await _model_info(client, job, known, request.notices.say)
        _check_model_online(job, info)
        # A known model's mode is decided here, before the output folder is touched; a probed
        # model's once its profile is known.
        output = _structured(job, spec, known, info, request.notices.say) if known is not None else None
        return await _run_with_client(request, job, registry, known, manifest, client, info, spec, output)


async def _run_with_client(
    request: RunRequest,
    job: JobConfig,
    registry: ModelRegistry,
    known: ModelProfile | None,
    manifest: Manifest,
    client: Client,
    info: dict[str, Any],
    spec: OutputSpec | None = None,
    output: StructuredOutput | None = None,
) -> int:
    from batcher.batches import left_to_batches_line, live_holds_usd
    from batcher.core.structured import output_line
    from batcher.engines import RayEngineError
    from batcher.images.pool import ImagePool
    from batcher.pipeline import FatalRunError, Pipeline
    from batcher.progress import cache_line, status_line
    from batcher.state import AlreadyRunning, JobState, StateError, acquire_lock

    out_dir = job.output_dir(request.out)
    say = request.notices.say
    try:
        # The lock before anything else under OUT: a second runner touches nothing.
        lock = acquire_lock(out_dir)
    except AlreadyRunning as exc:
        raise RunRefused(str(exc), EXIT_ALREADY_RUNNING) from None
    except OSError as exc:
        raise RunRefused(
            f"{out_dir}: cannot use the output folder: {os_reason(exc, out_dir)}", EXIT_FATAL
        ) from None
    try:
        state = JobState.open(out_dir)
    except StateError as exc:
        lock.release()
        raise RunRefused(str(exc), EXIT_FATAL) from None
    try:
        profile = known
        if profile is None:  # a known profile was checked against the job by _load
            profile = await _profile_for(client, job, registry, state, info, say)
            _check(job, profile)
            output = _structured(job, spec, profile, info, say)
        _warn_deprecated(profile, say)
        # The sync of a new or changed manifest runs beside the pipeline (batcher.resume).
        sync = resume.begin(state, job, manifest, request.redo_changed)
        try:
            if job.run.mode == "batch":
                if sync is not None:
                    await _sync_started(sync, job, whole=True)
                prefix = await _batch_prefix(job, profile, client, state, output, say)
                sink = _open_sink(out_dir, state, manifest, say, spec, job.run.results_uri)
                collector = await _collect_first(job, profile, client, state, sink, say, output)
                _, live_rows = collector.live_counts()
                # Rows this run finishes: those the collection just recorded, and those that need work.
                to_do = collector.counters.finished + state.count_remaining(
                    request.retry_errors, request.redo_changed
                )
                code = await _run_batches(
                    request, job, profile, client, state, sink, manifest, to_do + live_rows, collector, prefix
                )
                sink.retire_removed()
                _report_changed(state, say)
                return await _mirror_results(sink, say) or code
            to_do_box: list[int | None] = [None]
            refused: list[BaseException] = []
            # The image workers start while the sync takes in the first rows.
            async with ImagePool(workers=job.run.image_workers or None) as pool:
                # The examples prepared (and uploaded, for "files") once, before any row is sent.
                prefix, uploader = await _settle_prefix(
                    job, profile, pool, client, state, output, say, batch=False
                )
                if sync is not None:
                    await _sync_started(sync, job, whole=False)
                sink = _open_sink(out_dir, state, manifest, say, spec, job.run.results_uri)
                # Whatever the mode: first what ended batches answered; rows still in live batches
                # are left to them (sent by no one) and the run exits 75 while any remain.
                collector = await _collect_first(job, profile, client, state, sink, say, output)
                live_batches, live_rows = collector.live_counts()
                if collector.collected_batches:
                    say(
                        f"batcher: collected {collector.collected_rows:,} rows from "
                        f"{collector.collected_batches} ended batch(es)"
                    )
                pipeline: Driver
                if job.run.engine == "ray":
                    pipeline = _ray_driver(
                        job, profile, state, sink, out_dir, collector.counters, output, prefix, say
                    )
                else:
                    pipeline = Pipeline(
                        job=job,
                        profile=profile,
                        client=client,
                        state=state,
                        sink=sink,
                        pool=pool,
                        counters=collector.counters,
                        output=output,
                        uploader=uploader,
                        prefix=prefix,
                    )
                pipeline.policy = collector.policy
                gate = pipeline.budget = _budget_gate(job, state)
                if gate is not None:
                    # What live batches may still spend is committed already.
                    gate.budget.reserved_usd += live_holds_usd(state)
                code = EXIT_OK
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch_signals, pipeline)
                    tg.start_soon(
                        _report_when_counted,
                        pipeline,
                        out_dir,
                        sync,
                        request,
                        to_do_box,
                        collector.counters.finished,
                    )

                    def manifest_stop(exc: BaseException) -> None:
                        refused.append(exc)
                        pipeline.stop("the manifest cannot be used")

                    batches = state.pending_batches(manifest.rows(), request.retry_errors)
                    rows = resume.rows_from_thread(batches, manifest_stop, _MANIFEST_FAULTS)
                    try:
                        await pipeline.run(rows)
                    except FatalRunError as exc:
                        say(f"batcher: stopped: {exc}")
                        code = EXIT_FATAL
                    except RayEngineError as exc:
                        say(f"batcher: stopped: {exc}")
                        code = EXIT_FATAL
                    finally:
                        await rows.aclose()
                        if isinstance(batches, Generator):
                            batches.close()
                    tg.cancel_scope.cancel()
        finally:
            if sync is not None:
                sync.stop()
        counters = pipeline.counters
        # Rows the manifest no longer has leave results/ once a sync of it completed.
        sink.retire_removed()
        # Exports every few seconds leave many small parts; merge them once the run is over.
        sink.compact(target_rows=job.run.part_rows)
        if (mirror_code := await _mirror_results(sink, say)) and not code:
            code = mirror_code
        if pipeline.uploader is not None and not code:
            from batcher.files import finish_run

            # A live batch may refer to the job's uploads: they stay while one is.
            await finish_run(
                pipeline.uploader,
                counters,
                say,
                delete_at_end=job.images.delete_files_at_end and not live_batches,
            )
        _report_changed(state, say)
        remaining = to_do_box[0]
        if remaining is None and (sync is None or sync.gate.done):  # a short run, over before the count
            remaining = counters.finished + state.count_remaining(request.retry_errors, request.redo_changed)
        say(status_line(counters, remaining))
        if (line := cache_line(counters)) is not None:
            say(line)
        if output is not None:
            say(output_line(counters))
        if live_batches:
            say(left_to_batches_line(live_rows, live_batches, out_dir))
        request.notices.results(f"results: {out_dir / 'results'}")
        request.notices.results(report_line(out_dir))
        if refused:
            say(
                f"batcher: stopped: {_refusal(refused[0], job)}; nothing more was sent, and every "
                "answer so far is kept"
            )
            return EXIT_CONFIG
        if code:
            return code
        if counters.stop_reason == BUDGET_STOP:
            assert gate is not None  # only a budget stops a run for the budget
            say(f"batcher: stopped by the budget: {gate.budget.line()} (raise [limits] budget_usd to go on)")
            return EXIT_BUDGET
        if counters.stop_reason is not None or counters.left_for_next_run or live_batches:
            return EXIT_INCOMPLETE
        # The job's state, not just this run's rows: a rerun with nothing left to do still
        # says that some rows ended in error.
        return EXIT_ROW_ERRORS if state.summary().by_status.get("error") else EXIT_OK
    except errors.APIError as exc:
        if exc.fatal:
            raise RunRefused(f"stopped: {exc}", EXIT_FATAL) from None
        raise
    finally:
        state.close()
        lock.release()


def _ray_driver(
    job: JobConfig,
    profile: ModelProfile,
    state: JobState,
    sink: Sink,
    out_dir: Path,
    counters: Counters,
    output: StructuredOutput | None,
    prefix: SharedPrefix,
    say: Say,
) -> RayPipeline:
    """The Ray engine's driver (batcher.engines.ray_driver), given what the online one is."""
    from batcher.engines.ray_driver import RayPipeline

    key, base_url = settings_from_env()  # checked already: the workers need it too
    return RayPipeline(
        job=job,
        profile=profile,
        state=state,
        sink=sink,
        api_key=key,
        base_url=base_url,
        out_dir=str(out_dir),
        counters=counters,
        output=output,
        prefix=prefix,
        say=say,
    )


def _check_engine_installed(job: JobConfig) -> None:
    """``run.engine = "ray"`` without Ray: one line naming the extra, before anything is written."""
    import importlib.util

    if job.run.engine == "ray" and importlib.util.find_spec("ray") is None:
        from batcher.engines import INSTALL

        raise RunRefused(f'{job.path}: run.engine: "ray" needs Ray: {INSTALL}', EXIT_CONFIG)


def _manifest_faults() -> tuple[type[BaseException], ...]:
    from batcher.manifest import ManifestError
    from batcher.state import StateError

    return (ManifestError, StateError)


def _check_stores(job: JobConfig) -> None:
    """The object stores the job names up front (``results_uri``, example images; the manifest's is
    checked as it is opened) have their extras installed, or the run is refused (exit 2)."""
    from batcher.stores import StoreError, check_extras

    examples = [source for example in job.request.examples for source in example.image_list]
    try:
        check_extras([job.run.results_uri, *examples])
    except StoreError as exc:
        raise RunRefused(str(exc), exc.exit_code) from None


async def _mirror_results(sink: Sink, say: Say) -> int | None:
    """``[run] results_uri``: the run's parts mirrored (in a thread: uploads are network calls);
    EXIT_FATAL with one line if the store refused, None otherwise (the local results are whole
    either way, and the next run uploads what is missing)."""
    from batcher.stores import StoreError

    if sink.mirror is None:
        return None
    try:
        report = await anyio.to_thread.run_sync(sink.mirror_parts)
    except StoreError as exc:
        say(f"batcher: {exc} (the local results are complete; the next run uploads what is missing)")
        return EXIT_FATAL
    if report is not None and (report.uploaded or report.deleted):
        say(
            f"batcher: results_uri: {len(report.uploaded)} part(s) written to {sink.mirror.uri}"
            + (f", {len(report.deleted)} merged away deleted" if report.deleted else "")
        )
    return None


#: What a sync or the resume pass may find in the manifest that makes it unusable (exit 2).
_MANIFEST_FAULTS = _manifest_faults()


def _open_sink(
    out_dir: Path,
    state: JobState,
    manifest: Manifest,
    say: Say,
    spec: OutputSpec | None = None,
    results_uri: str | None = None,
) -> Sink:
    """The results sink, settled after any crash, holding the rows of the current manifest only
    (and, with [output], the schema's typed columns; with ``[run] results_uri``, mirrored there)."""
    from batcher.sink import Sink, SinkError
    from batcher.stores import ResultsMirror

    mirror = ResultsMirror(results_uri) if results_uri is not None else None
    try:
        sink = Sink(out_dir, state, manifest.field_types(), output=spec, mirror=mirror)
    except SinkError as exc:
        # An [output] other than the one the folder's parts were written with: nothing is sent.
        raise RunRefused(str(exc), exc.exit_code) from None
    sink.recover()
    for warning in sink.warnings:
        say(f"batcher: warning: {warning}")
    sink.retire_removed()
    return sink


def _refusal(exc: BaseException, job: JobConfig) -> str:
    from batcher.manifest import ManifestError

    where = job.path if isinstance(exc, ManifestError) else job.manifest_path
    return f"{where}: {exc}"


async def _sync_started(sync: resume.BackgroundSync, job: JobConfig, *, whole: bool) -> None:
    """Wait for the sync's first rows (batch mode: for all of it); what it found wrong in the
    manifest by then refuses the run with nothing sent (exit 2)."""
    try:
        await (sync.settled() if whole else sync.first_rows())
    except _MANIFEST_FAULTS as exc:
        raise RunRefused(_refusal(exc, job), EXIT_CONFIG) from None


async def _report_when_counted(
    pipeline: Driver,
    out_dir: Path,
    sync: resume.BackgroundSync | None,
    request: RunRequest,
    box: list[int | None],
    collected: int,
) -> None:
    """The progress display, once the rows left are known (after the sync, counted off the run's
    connection: a scan at millions of rows)."""
    if sync is not None:
        with contextlib.suppress(Exception):  # the run itself reports what the sync found
            await sync.settled()
        if not sync.gate.done:
            return
    # ``collected``: rows the collection of ended batches recorded before the pipeline started.
    box[0] = collected + await anyio.to_thread.run_sync(
        partial(resume.count_to_do, out_dir, request.retry_errors, request.redo_changed),
        abandon_on_cancel=True,
    )
    await request.notices.watch(
        pipeline.counters,
        box[0],
        extra=lambda: pipeline.limiter.describe() if pipeline.limiter else "",
    )


async def _collect_first(
    job: JobConfig,
    profile: ModelProfile,
    client: Client,
    state: JobState,
    sink: Sink,
    say: Say,
    output: StructuredOutput | None = None,
) -> Collector:
    """Collect the batches that have ended, before anything is sent; a fatal answer stops the run."""
    from batcher.batches import collect_ended
    from batcher.core.outcomes import Counters

    collector = await collect_ended(
        job=job,
        profile=profile,
        client=client,
        state=state,
        sink=sink,
        counters=Counters(),
        say=say,
        output=output,
    )
    if collector.fatal is not None:
        raise RunRefused(f"stopped: {collector.fatal}", EXIT_FATAL)
    return collector


def _report_changed(state: JobState, say: Say) -> None:
    """Answered rows whose content changed are left as they are, and said so."""
    changed = state.count_changed()
    if changed:
        say(
            f"batcher: {changed:,} row(s) changed since they were answered (prompt, image or request "
            "settings); `batcher run --redo-changed` resends them"
        )


async def _run_batches(
    request: RunRequest,
    job: JobConfig,
    profile: ModelProfile,
    client: Client,
    state: JobState,
    sink: Sink,
    manifest: Manifest,
    to_do: int,
    collector: Collector,
    prefix: SharedPrefix,
) -> int:
    """``[run] mode = "batch"``: the Message Batches API (see :mod:`batcher.batches`)."""
    from batcher.batches import left_to_batches_line, run_batch_mode
    from batcher.progress import batch_status_line, cache_line

    gate = _budget_gate(job, state)
    code, counters, progress = await run_batch_mode(
        job=job,
        profile=profile,
        client=client,
        state=state,
        sink=sink,
        manifest=manifest,
        retry_errors=request.retry_errors,
        notices=request.notices,
        to_do=to_do,
        budget=gate,
        collector=collector,
        prefix=prefix,
    )
    say = request.notices.say
    say(batch_status_line(counters, to_do, progress))
    if (line := cache_line(counters)) is not None:
        say(line)
    if collector.output is not None:
        from batcher.core.structured import output_line

        say(output_line(counters))
    if code == EXIT_BUDGET and gate is not None:
        say(f"batcher: stopped by the budget: {gate.budget.line()} (raise [limits] budget_usd to go on)")
    if progress.live_batches:
        say(left_to_batches_line(progress.live_rows, progress.live_batches, state.out_dir))
    elif code == EXIT_INCOMPLETE:
        say("batcher: rows left to resubmit: `batcher run` again sends them")
    request.notices.results(f"results: {state.out_dir / 'results'}")
    request.notices.results(report_line(state.out_dir))
    return code


async def _settle_prefix(
    job: JobConfig,
    profile: ModelProfile,
    pool: ImagePreparer | None,
    client: Client,
    state: JobState,
    output: StructuredOutput | None,
    say: Say,
    *,
    batch: bool,
) -> tuple[SharedPrefix, FileUploader | None]:
    """The run's shared prefix (:func:`batcher.core.examples.settle_prefix`), its cache decision
    said once; a bad example refuses the run before any row is sent. Also the uploader the
    examples went through (transport "files"), for the driver to share."""
    from batcher.core.examples import decision_line, settle_prefix
    from batcher.core.prepare import RowPreparer

    preparer = RowPreparer.for_job(job, profile, pool, downloader=client, state=state, stopping=anyio.Event())
    try:
        prefix, decision = await settle_prefix(job, profile, preparer, output, batch=batch)
    except JobError as exc:
        raise RunRefused(str(exc), exc.exit_code) from None
    if job.request.examples or job.request.system:
        say(decision_line(decision))
    return prefix, preparer.uploader


async def _batch_prefix(
    job: JobConfig,
    profile: ModelProfile,
    client: Client,
    state: JobState,
    output: StructuredOutput | None,
    say: Say,
) -> SharedPrefix:
    """Batch mode's shared prefix: the examples' images prepared in a pool of their own (the batch
    driver opens its own for the rows)."""
    if not job.request.examples:
        return (await _settle_prefix(job, profile, None, client, state, output, say, batch=True))[0]
    from batcher.config import example_image_count
    from batcher.images.pool import ImagePool, default_workers

    workers = min(example_image_count(job), job.run.image_workers or default_workers())
    async with ImagePool(workers=workers) as pool:
        return (await _settle_prefix(job, profile, pool, client, state, output, say, batch=True))[0]


def _budget_gate(job: JobConfig, state: JobState) -> BudgetGate | None:
    """The budget hook for a job with ``[limits] budget_usd``; spend of earlier runs counts."""
    if job.limits.budget_usd is None:
        return None
    return gate_for(job, state.summary().cost_usd)
