"""``batcher run``: from a job file to a finished (or resumable) output folder.

The order matters and is the contract: everything that can be refused is refused before anything
is sent (job file, model, manifest, key, the model's own answer from the Models API, duplicate
ids); only then does the pipeline start. Exit codes (also in README):

=====  ===========================================================================
0      every row is ``ok``
1      fatal: no key, 401/402/spend limit, I/O trouble — what was done is kept
2      usage or config error (job file, model, manifest, duplicate ids): nothing sent
3      the run finished but some rows ended in ``error``
4      another ``batcher run`` is already running on this output folder
5      the budget stopped the run (``limits.budget_usd``)
75     not finished: interrupted, or rows left for the next run after their retries
=====  ===========================================================================
"""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO

import anyio

from batcher.api import errors
from batcher.api.client import Client, MissingKeyError, settings_from_env
from batcher.budget import BUDGET_STOP
from batcher.config import ConfigError, JobConfig, check_against_model, job_registry, load_job
from batcher.models import ModelProfile, ModelRegistry

EXIT_OK, EXIT_FATAL, EXIT_CONFIG, EXIT_ROW_ERRORS = 0, 1, 2, 3
EXIT_ALREADY_RUNNING, EXIT_BUDGET, EXIT_INCOMPLETE = 4, 5, 75


class RunRefused(Exception):
    """A reason not to start, with the exit code it deserves; the message is one line."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class RunRequest:
    job_path: Path
    out: Path | None = None
    retry_errors: bool = False
    #: where progress and the summary go (stderr) and where the final line goes (stdout)
    err: TextIO = sys.stderr
    out_stream: TextIO = sys.stdout
    today: dt.date | None = None


def run(request: RunRequest) -> int:
    """Run a job; returns the exit code. Every refusal is one line on stderr."""
    try:
        job, registry, profile = _load(request)
        return anyio.run(_run_async, request, job, registry, profile)
    except RunRefused as exc:
        print(f"batcher: {exc}", file=request.err)
        return exc.code
    except KeyboardInterrupt:
        # Outside the pipeline (reading the manifest, merging parts): nothing half-done is kept.
        print("batcher: interrupted; `batcher run` again resumes", file=request.err)
        return EXIT_INCOMPLETE
    except (OSError, sqlite3.Error, BaseExceptionGroup) as exc:
        cause = _io_cause(exc)
        if cause is None:
            raise
        print(f"batcher: stopped: {type(cause).__name__}: {cause}; every answer recorded so far is "
              "kept, and `batcher run` again resumes", file=request.err)
        return EXIT_FATAL


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
        job = load_job(request.job_path)
        registry = job_registry(job)
    except ConfigError as exc:
        raise RunRefused(str(exc), EXIT_CONFIG) from None
    profile = registry.get(job.request.model)
    if profile is None:
        return job, registry, None
    today = request.today or dt.date.today()
    if profile.is_retired(today):
        raise RunRefused(f"{job.path}: request.model: {profile.id} retired on {profile.retires}; "
                         "choose a current model (see `batcher models`)", EXIT_CONFIG)
    _check(job, profile)
    return job, registry, profile


def _check(job: JobConfig, profile: ModelProfile) -> None:
    try:
        check_against_model(job, profile)
    except ConfigError as exc:
        raise RunRefused(str(exc), EXIT_CONFIG) from None


async def _profile_for(client: Client, job: JobConfig, registry: ModelRegistry, state,  # type: ignore[no-untyped-def]
                       info: dict, err: TextIO) -> ModelProfile:  # type: ignore[type-arg]
    """A model missing from the table: probed once through count_tokens, kept in the job state."""
    from batcher import probe

    model_id = job.request.model
    key = f"model_probe:{model_id}"
    cached = state.get_meta(key)
    if cached is not None:
        return probe.from_meta(cached, registry)
    try:
        profile, matched = await probe.probe_model(client, model_id, info, registry)
    except errors.APIError as exc:
        raise RunRefused(f"{job.path}: request.model: {model_id} is not in batcher's model table "
                         f"and probing it failed: {exc}", EXIT_FATAL) from None
    state.set_meta(key, probe.to_meta(profile))
    how = "matches a known size" if matched else "unlike any known size: using the smallest"
    print(f"batcher: {model_id} is not in configs/models.toml; probed through count_tokens: "
          f"native {profile.native_edge} px / {profile.image_token_budget} tokens ({how}); "
          "costs at the highest known price until you set [models." + model_id + ".prices]", file=err)
    return profile


def _open_manifest(job: JobConfig):  # type: ignore[no-untyped-def]
    from batcher.manifest import ManifestError, open_manifest

    try:
        manifest = open_manifest(job.manifest_path, id_column=job.input.id_column,
                                 image_column=job.input.image_column,
                                 prompt_column=job.input.prompt_column, prompt_template=job.input.prompt)
        manifest.check()
    except ManifestError as exc:
        raise RunRefused(f"{job.path}: {exc}", EXIT_CONFIG) from None
    return manifest


async def _model_info(client: Client, job: JobConfig) -> dict:  # type: ignore[type-arg]
    """``GET /v1/models/{id}`` once: the API's word on whether the model exists today."""
    try:
        return await client.get_model(job.request.model)
    except errors.NotFoundError:
        raise RunRefused(f"{job.path}: request.model: the API does not know {job.request.model!r} "
                         "(unknown or retired)", EXIT_CONFIG) from None
    except errors.APIError as exc:
        raise RunRefused(f"cannot check the model with the API: {exc}", EXIT_FATAL) from None


def _check_model_online(job: JobConfig, info: dict) -> None:  # type: ignore[type-arg]
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
        raise RunRefused(f"{job.path}: request.max_tokens: {job.request.max_tokens} is above "
                         f"{model}'s maximum of {max_tokens}", EXIT_CONFIG)


def _warn_deprecated(profile: ModelProfile, err: TextIO) -> None:
    if profile.lifecycle == "deprecated" and profile.retires:
        print(f"batcher: warning: {profile.id} is deprecated and retires on {profile.retires}; "
              "requests fail after that date", file=err)


def _cap_off(caps: dict, name: str) -> bool:  # type: ignore[type-arg]
    value = caps.get(name)
    if isinstance(value, dict):
        return value.get("supported") is False
    return value is False


async def _run_async(request: RunRequest, job: JobConfig, registry: ModelRegistry,
                     known: ModelProfile | None) -> int:
    manifest = _open_manifest(job)
    try:
        key, base_url = settings_from_env()
    except MissingKeyError as exc:
        raise RunRefused(str(exc), EXIT_FATAL) from None
    # One client for the whole run, its pool sized to the concurrency.
    async with Client(key, base_url, max_connections=job.run.concurrency,
                      timeout_s=job.run.request_timeout_s) as client:
        # The API's word on the model before anything is written: a refused job leaves no trace.
        info = await _model_info(client, job)
        _check_model_online(job, info)
        return await _run_with_client(request, job, registry, known, manifest, client, info)


async def _run_with_client(request: RunRequest, job: JobConfig, registry: ModelRegistry,  # type: ignore[no-untyped-def]
                           known: ModelProfile | None, manifest, client: Client, info: dict) -> int:  # type: ignore[type-arg]
    from batcher.images.pool import ImagePool
    from batcher.manifest import ManifestError
    from batcher.pipeline import FatalRunError, Pipeline
    from batcher.progress import report, status_line
    from batcher.sink import Sink
    from batcher.state import AlreadyRunning, JobState, StateError, acquire_lock

    out_dir = job.output_dir(request.out)
    try:
        # The lock before anything else under OUT: a second runner touches nothing.
        lock = acquire_lock(out_dir)
    except AlreadyRunning as exc:
        raise RunRefused(str(exc), EXIT_ALREADY_RUNNING) from None
    except OSError as exc:
        raise RunRefused(f"{out_dir}: cannot use the output folder: {exc}", EXIT_FATAL) from None
    try:
        state = JobState.open(out_dir)
    except StateError as exc:
        lock.release()
        raise RunRefused(str(exc), EXIT_FATAL) from None
    try:
        profile = known
        if profile is None:  # a known profile was checked against the job by _load
            profile = await _profile_for(client, job, registry, state, info, request.err)
            _check(job, profile)
        _warn_deprecated(profile, request.err)
        try:
            report_ = state.sync_rows(manifest.rows())
        except ManifestError as exc:  # found past the header (a CSV quote open at its end): nothing sent
            raise RunRefused(f"{job.path}: {exc}", EXIT_CONFIG) from None
        if report_.duplicates:
            names = ", ".join(report_.duplicates[:20])
            more = f" and {report_.duplicate_count - 20} more" if report_.duplicate_count > 20 else ""
            raise RunRefused(f"{job.manifest_path}: duplicate ids: {names}{more}", EXIT_CONFIG)
        sink = Sink(out_dir, state, manifest.field_types())
        sink.recover()
        for warning in sink.warnings:
            print(f"batcher: warning: {warning}", file=request.err)
        to_do = state.count_remaining(request.retry_errors)
        if job.run.mode == "batch":
            return await _run_batches(request, job, profile, client, state, sink, manifest, to_do)
        async with ImagePool(workers=job.run.image_workers or None) as pool:
            pipeline = Pipeline(job=job, profile=profile, client=client, state=state, sink=sink,
                                pool=pool)
            pipeline.policy = pipeline.policy.__class__(max_attempts=job.run.max_attempts,
                                                        max_wait_s=job.run.max_retry_wait_s)
            pipeline.budget = _budget_gate(job, profile, state)
            code = EXIT_OK
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_signals, pipeline)
                tg.start_soon(partial(report, pipeline.counters, to_do, extra=lambda: (
                    pipeline.limiter.describe() if pipeline.limiter else "")))
                try:
                    await pipeline.run(state.pending(manifest.rows(), request.retry_errors))
                except FatalRunError as exc:
                    print(f"batcher: stopped: {exc}", file=request.err)
                    code = EXIT_FATAL
                tg.cancel_scope.cancel()
        counters = pipeline.counters
        # Exports every few seconds leave many small parts; merge them once the run is over.
        sink.compact(target_rows=job.run.part_rows)
        if pipeline.uploader is not None and not code:
            from batcher.files import finish_run

            await finish_run(pipeline.uploader, counters, request.err,
                             delete_at_end=job.images.delete_files_at_end)
        print(status_line(counters, to_do), file=request.err)
        print(f"results: {out_dir / 'results'}", file=request.out_stream)
        if code:
            return code
        if counters.stop_reason == BUDGET_STOP:
            print(f"batcher: stopped by the budget: {pipeline.budget.budget.line()} "
                  "(raise [limits] budget_usd to go on)", file=request.err)
            return EXIT_BUDGET
        if counters.stop_reason is not None or counters.left_for_next_run:
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


async def _run_batches(request: RunRequest, job: JobConfig, profile: ModelProfile, client: Client,  # type: ignore[no-untyped-def]
                       state, sink, manifest, to_do: int) -> int:
    """``[run] mode = "batch"``: the Message Batches API (see :mod:`batcher.batches`)."""
    from batcher.batches import run_batch_mode
    from batcher.progress import status_line

    gate = _budget_gate(job, profile, state, batch=True)
    code, counters = await run_batch_mode(job=job, profile=profile, client=client, state=state, sink=sink,
                                          manifest=manifest, retry_errors=request.retry_errors,
                                          err=request.err, to_do=to_do, budget=gate)
    print(status_line(counters, to_do), file=request.err)
    if code == EXIT_BUDGET and gate is not None:
        print(f"batcher: stopped by the budget: {gate.budget.line()} "
              "(raise [limits] budget_usd to go on)", file=request.err)
    elif code == EXIT_INCOMPLETE:
        print("batcher: batches still running or rows to resubmit: `batcher run` again collects "
              "them (see `batcher batches OUT`)", file=request.err)
    print(f"results: {state.out_dir / 'results'}", file=request.out_stream)
    return code


def _budget_gate(job: JobConfig, profile: ModelProfile, state, *, batch: bool = False):  # type: ignore[no-untyped-def]
    """The budget hook for a job with ``[limits] budget_usd``; spend of earlier runs counts."""
    if job.limits.budget_usd is None:
        return None
    from batcher.budget import gate_for

    return gate_for(job, profile, state.summary().cost_usd, batch=batch)


async def _watch_signals(pipeline) -> None:  # type: ignore[no-untyped-def]
    """First SIGINT/SIGTERM: take no new rows, let in-flight requests finish. Second: abandon them."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if pipeline.stopping.is_set():
                pipeline.abandon(f"{name} again")
                return
            pipeline.stop(name)
