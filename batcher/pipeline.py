"""The online run: read → prepare → request → write, as bounded anyio stages.

Each stage is a small function over the records of :mod:`batcher.records`, joined by memory
streams with small buffers, so a slow stage holds back the ones before it (back-pressure) and
memory stays bounded however long the manifest is. Every row ends in exactly one of:

- ``state.record(Result)``: a final answer or a final error (durable the moment it returns);
- ``state.record_transient(...)``: it ran out of retries in this run and is left for the next;
- nothing, when the run is stopped (signal, fatal error, budget) before it was answered: the
  next run sends it again. Only requests in flight when a run dies are ever paid twice.

Stopping takes effect at once for everything not yet on the wire: queued rows are dropped, waits
for the rate limits and between retries end, and only requests already sent are awaited.

Read-ahead is bounded by what the limits let through, not by ``concurrency``: the request stage
holds at most about twice the limiter's in-flight window of prepared rows (each carries its
images), so ``concurrency = 500`` on a slow key does not prepare 500 images that wait for minutes.
"""

from __future__ import annotations

import base64
import random
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from batcher.api import errors
from batcher.api.bodies import ImagePart, RequestSettings, answer_text, betas_for, messages_body
from batcher.api.client import Client
from batcher.budget import BUDGET_STOP
from batcher.config import JobConfig
from batcher.cost import usage_cost
from batcher.models import ModelProfile
from batcher.ratelimit import GaveUp, Limiter, request_cost
from batcher.records import ImageSent, Result, Row
from batcher.retry import RetryPolicy, retrying
from batcher.urls import is_url as _is_url

#: Seconds requests in flight get to come back after a fatal answer before they are dropped.
FATAL_GRACE_S = 10.0


class Stopped(Exception):
    """An image's download or preparation was cancelled because the run is stopping."""


class FatalRunError(Exception):
    """Nothing else this run sends can succeed (401, 402, spend limit): stop, keep what is done."""


@dataclass
class Counters:
    """The live picture of a run, for the progress display and the summary."""

    total: int = 0
    ok: int = 0
    error: int = 0
    left_for_next_run: int = 0
    errors_by_type: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    in_flight: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    started: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None

    @property
    def finished(self) -> int:
        return self.ok + self.error + self.left_for_next_run

    def add(self, result: Result) -> None:
        if result.status == "ok":
            self.ok += 1
        else:
            self.error += 1
            self.errors_by_type[result.error_type or "error"] += 1
        for warning in result.warnings:
            self.warnings[warning] += 1
        self.input_tokens += result.input_tokens or 0
        self.output_tokens += result.output_tokens or 0
        self.cost_usd += result.cost_usd or 0.0


@dataclass
class Prepared:
    row: Row
    parts: list[ImagePart]
    sent: list[ImageSent]
    warnings: list[str]
    #: transport "files": the prepared image behind each file part (by part index), for re-uploads
    uploaded: dict[int, Any] = field(default_factory=dict)


@dataclass
class Transient:
    """A row that used up its retries in this run: left for the next one."""

    row_id: str
    error_type: str
    message: str
    attempts: int


Outcome = Result | Transient


@dataclass
class Recorded:
    """An outcome the request stage has made durable already: the writer only counts it."""

    outcome: Outcome


#: What reaches the writer: outcomes to record (bad rows, bad images), or ones recorded already.
Written = Outcome | Recorded


@dataclass
class Pipeline:
    job: JobConfig
    profile: ModelProfile
    client: Client
    state: Any  # batcher.state.JobState
    sink: Any  # batcher.sink.Sink
    pool: Any  # batcher.images.pool.ImagePool
    counters: Counters = field(default_factory=Counters)
    #: the job's shared rate-limit picture (batcher.ratelimit); made from the job when not given
    limiter: Limiter | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rng: random.Random = field(default_factory=random.Random)
    on_result: Callable[[Result], None] | None = None
    #: ``[limits] budget_usd``: a batcher.budget.BudgetGate; None sends without a cap
    budget: Any = None
    #: transport "files": a batcher.files.FileUploader (made from the job when not given)
    uploader: Any = None

    _fatal: list[BaseException] = field(default_factory=list)
    #: cancel scopes of the downloads and image preparations in flight (cancelled by ``stop``)
    _unsent: set[anyio.CancelScope] = field(default_factory=set)
    #: prepared rows the request stage holds (waiting for the limits or in flight)
    _holding: int = 0
    _hold_changed: anyio.Event | None = None
    _preparers: int = 2

    def __post_init__(self) -> None:
        from batcher.images.sizing import job_image_options

        self.image_options = job_image_options(self.job)
        req = self.job.request
        self.settings = RequestSettings(
            max_tokens=req.max_tokens,
            system=req.system,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            effort=req.effort,
            stop_sequences=req.stop_sequences,
        )
        self.stopping = anyio.Event()
        if self.uploader is None and self.job.images.transport == "files":
            from batcher.files import FileUploader

            self.uploader = FileUploader.for_job(self.job, self.client, self.state)

    # --- the whole run ----------------------------------------------------------------------

    async def run(self, rows: Iterable[Row] | AsyncIterable[Row]) -> Counters:
        concurrency = self.job.run.concurrency
        if self.limiter is None:
            self.limiter = Limiter.for_job(self.job)
        self._hold_changed = anyio.Event()
        preparers = self._preparers = max(2, 2 * self.pool.workers)
        to_prepare_send, to_prepare = anyio.create_memory_object_stream[Row](concurrency)
        # Prepared rows are heavy (base64 images): only a few wait between the stages.
        to_request_send, to_request = anyio.create_memory_object_stream[Prepared](preparers)
        results_send, results = anyio.create_memory_object_stream[Written](concurrency * 2)
        # Any stage may find that nothing else can succeed (a 401 on an upload or a message).
        fatal = self._fatal = []
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._write, results)
            try:
                async with anyio.create_task_group() as tg:
                    self._cancel_work = tg.cancel_scope
                    tg.start_soon(self._feed, rows, to_prepare_send, results_send.clone())
                    async with to_prepare, to_request_send:
                        for _ in range(preparers):
                            tg.start_soon(
                                self._prepare,
                                to_prepare.clone(),
                                to_request_send.clone(),
                                results_send.clone(),
                            )
                    async with to_request:
                        for _ in range(concurrency):
                            tg.start_soon(self._request, to_request.clone(), results_send.clone())
            finally:
                results_send.close()
        # The last picture of the limits, for `batcher status` (snapshots are otherwise ~5 s apart).
        if self.state is not None:
            self.state.set_meta("rate_limits", self.limiter.snapshot())
        if fatal:
            raise FatalRunError(str(fatal[0])) from fatal[0]
        return self.counters

    def stop(self, reason: str) -> None:
        """Take no new rows; requests in flight finish. Downloads and image preparation in flight
        are cancelled (their workers killed): nothing they make would be sent."""
        if self.counters.stop_reason is None:
            self.counters.stop_reason = reason
        self.stopping.set()
        for scope in list(self._unsent):
            scope.cancel()
        # Waits for the limits look at ``stopping`` when woken; the request stage's hold too.
        if self.limiter is not None:
            self.limiter.wake()
        if self._hold_changed is not None:
            self._hold_changed.set()

    def fatal_stop(self, exc: BaseException) -> None:
        """Nothing more can succeed (401, 402, spend limit): send nothing new, and give the
        requests already sent a short grace to come back, since an answer the API has billed but
        that is never recorded would be paid for again by the next run."""
        self._fatal.append(exc)
        self.stop(f"fatal: {exc}")
        scope = getattr(self, "_cancel_work", None)
        if scope is not None:
            scope.deadline = min(scope.deadline, anyio.current_time() + FATAL_GRACE_S)

    def abandon(self, reason: str) -> None:
        """Stop now: requests in flight are dropped (the next run sends them again)."""
        self.stop(reason)
        self._cancel_work.cancel()

    # --- stages -----------------------------------------------------------------------------

    async def _feed(
        self,
        rows: Iterable[Row] | AsyncIterable[Row],
        out: ObjectSendStream[Row],
        results: ObjectSendStream[Written],
    ) -> None:
        async with out, results:
            async for row in _as_async(rows):
                if self.stopping.is_set():
                    return
                self.counters.total += 1
                if row.error is not None:
                    await results.send(Result.from_row_error(row))
                else:
                    await out.send(row)

    async def _prepare(
        self,
        rows: ObjectReceiveStream[Row],
        out: ObjectSendStream[Prepared],
        results: ObjectSendStream[Written],
    ) -> None:
        from batcher.files import UploadError
        from batcher.images.errors import ImageError

        async with rows, out, results:
            async for row in rows:
                if self.stopping.is_set():
                    continue  # drain: a stopped run prepares nothing more
                try:
                    prepared = await self._prepare_row(row)
                except Stopped:
                    continue  # the run stopped while its image was prepared: the next run sends it
                except ImageError as exc:
                    await results.send(self._image_failure(row, exc))
                    continue
                except UploadError as exc:
                    await results.send(self._upload_failure(row, exc))
                    continue
                await out.send(prepared)

    async def _prepare_row(self, row: Row) -> Prepared:
        from batcher.images.errors import ImageError

        parts: list[ImagePart] = []
        sent: list[ImageSent] = []
        warnings: list[str] = []
        uploaded: dict[int, Any] = {}
        transport = self.job.images.transport
        for n, source in enumerate(row.images, start=1):
            if transport == "url" and _is_url(source):
                parts.append(ImagePart("url", source))
                sent.append(ImageSent(source=source, transport="url"))
                continue
            # transport "files": an image several rows ask about is prepared once (batcher.files)
            memo = self.uploader.prepared if transport == "files" else None
            try:
                if memo is not None:
                    image = await memo.prepare(source, len(row.images), self._prepare_image)
                else:
                    image = await self._prepare_image(source, len(row.images))
            except ImageError as exc:
                exc.image_index = n  # type: ignore[attr-defined]
                raise
            warnings.extend(image.warnings)
            sent.append(
                ImageSent(
                    source=source,
                    width=image.width,
                    height=image.height,
                    bytes=len(image.data),
                    media_type=image.media_type,
                    transport="base64",
                    tokens=image.tokens,
                )
            )
            if transport == "files":
                uploaded[len(parts)] = image
                parts.append(await self._file_part(image, sent[-1], n))
                continue
            # Off the event loop: a 5 MB image takes milliseconds to encode, every request in flight
            # would wait for it (issue 13).
            parts.append(
                ImagePart("base64", await anyio.to_thread.run_sync(b64_text, image.data), image.media_type)
            )
        return Prepared(row, parts, sent, warnings, uploaded)

    async def _prepare_image(self, source: str, images_in_request: int) -> Any:
        """Download (a URL) and prepare one image in the pool; raises :class:`Stopped` when the run
        stops meanwhile, at once, whatever the download or the worker was doing."""
        with anyio.CancelScope() as scope:
            self._unsent.add(scope)
            try:
                if self.stopping.is_set():
                    scope.cancel()
                data = await self._download(source) if _is_url(source) else source
                return await self.pool.prepare(
                    data, self.profile, self.image_options, images_in_request=images_in_request
                )
            finally:
                self._unsent.discard(scope)
        raise Stopped(source)

    # --- transport "files" (batcher.files) ------------------------------------------------------

    async def _file_part(
        self, image: Any, sent: ImageSent, index: int, stale: str | None = None
    ) -> ImagePart:
        """Refer to ``image`` by file id, uploading it if this job has not (or its id is gone)."""
        from batcher.files import UploadError

        try:
            file_id = await self.uploader.file_id(image, sent.source, stale=stale)
        except UploadError as exc:
            exc.image_index = index  # type: ignore[attr-defined]
            raise
        sent.transport, sent.file_id = "file", file_id
        return ImagePart("file", file_id, image.media_type)

    def _upload_failure(self, row: Row, exc: Exception) -> Outcome:
        """An image could not be uploaded: the row is left for the next run or, if final, an error."""
        if getattr(exc, "fatal", False):
            self.fatal_stop(exc)
        if getattr(exc, "retryable", False) or getattr(exc, "fatal", False):
            index = getattr(exc, "image_index", 1)
            return Transient(row.id, "upload_failed", f"image {index} ({row.images[index - 1]}): {exc}", 0)
        return self._image_failure(row, exc)

    async def _send_with_files(self, p: Prepared) -> Outcome:
        """``_send``, and once more after uploading again any file id the API answered 404 for."""
        from batcher.files import UploadError, stale_file_ids

        outcome = await self._send(p)
        if (
            not p.uploaded
            or not isinstance(outcome, Result)
            or outcome.status != "error"
            or outcome.error_type != "not_found_error"
        ):
            return outcome
        ids = {i: p.parts[i].value for i in p.uploaded}
        stale = set(stale_file_ids(outcome.error_message or "", list(ids.values())))
        if not stale:
            return outcome
        parts = list(p.parts)
        try:
            for i, image in p.uploaded.items():
                if ids[i] in stale:
                    parts[i] = await self._file_part(image, p.sent[i], i + 1, stale=ids[i])
        except UploadError as exc:
            return self._upload_failure(p.row, exc)
        again = await self._send(Prepared(p.row, parts, p.sent, p.warnings, p.uploaded))
        if isinstance(again, Result):
            again.attempts = (again.attempts or 0) + (outcome.attempts or 0)
        else:
            again.attempts += outcome.attempts or 0
        return again

    async def _download(self, url: str) -> bytes:
        """URLs are only fetched when the job sends bytes, not URLs; a failure (a ``DownloadError``
        type from :mod:`batcher.images.errors`) is the row's."""
        from batcher.api.download import DownloadLimits

        imgs = self.job.images
        return await self.client.fetch(
            url,
            DownloadLimits(
                timeout_s=imgs.download_timeout_s,
                max_bytes=imgs.download_max_bytes,
                allow_private=imgs.allow_private_urls,
            ),
        )

    def _image_failure(self, row: Row, exc: Exception) -> Result:
        index = getattr(exc, "image_index", None)
        where = f"image {index} ({row.images[index - 1]})" if index else "image"
        return Result(
            id=row.id,
            status="error",
            model=self.profile.id,
            error_type=getattr(exc, "error_type", "image_error"),
            error_message=f"{where}: {_named_once(str(exc), row.images, index)}",
            fields=dict(row.fields),
            images=[ImageSent(source=s) for s in row.images],
        )

    async def _request(self, rows: ObjectReceiveStream[Prepared], results: ObjectSendStream[Written]) -> None:
        async with rows, results:
            while True:
                await self._wait_to_hold()
                # Counted before the wait for a row, so idle workers cannot all pass the gate.
                self._holding += 1
                try:
                    try:
                        prepared = await rows.receive()
                    except anyio.EndOfStream:
                        return
                    outcome = await self._request_one(prepared)
                finally:
                    self._holding -= 1
                    assert self._hold_changed is not None
                    self._hold_changed.set()
                if outcome is None:
                    continue  # not sent: with the run stopping, the rest drains the same way
                # Durable before anything else happens, by this task: an answer the API has billed
                # waits in no queue, so a kill -9 pays twice only for requests truly in flight.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._record_all, [outcome])
                await results.send(Recorded(outcome))

    async def _wait_to_hold(self) -> None:
        """Take a prepared row only while the limits could send it soon (see the module doc)."""
        assert self.limiter is not None and self._hold_changed is not None
        while not self.stopping.is_set() and self._holding >= hold_limit(
            self.limiter.in_flight_limit(), self.limiter.latency_s is not None, self._preparers
        ):
            if self._hold_changed.is_set():
                self._hold_changed = anyio.Event()
            # The window also grows as the limiter learns, without a row finishing: look again.
            with anyio.move_on_after(0.5):
                await self._hold_changed.wait()

    async def _request_one(self, prepared: Prepared) -> Outcome | None:
        """One row's request; None: not sent (stopping, budget) or the job is over (fatal)."""
        if self.stopping.is_set():
            return None
        # The budget hook: hold the row's worst case before sending; none left, stop.
        held = self.budget.reserve(prepared) if self.budget is not None else 0.0
        if held is None:
            self.stop(BUDGET_STOP)
            return None
        try:
            outcome = await self._send_with_files(prepared)
        except errors.APIError as exc:
            if exc.fatal:
                self.fatal_stop(exc)
                return None
            raise
        except GaveUp:
            outcome = None
        if self.budget is not None:
            self.budget.settle(held, outcome)
        return outcome

    async def _send(self, p: Prepared) -> Outcome:
        body = messages_body(self.profile, self.settings, p.parts, p.row.prompt)
        betas = betas_for(p.parts, self.job.images.files_beta)
        if self.limiter is None:
            self.limiter = Limiter.for_job(self.job)
        limiter = self.limiter
        cost = request_cost(body, self.profile, [s.tokens for s in p.sent], self.settings.max_tokens)
        attempts = 0
        started = time.monotonic()
        try:
            async for attempt in retrying(self.policy, self.rng, sleep=self._retry_sleep):
                with attempt:
                    attempts += 1
                    if attempts > 1:
                        self.counters.retries += 1
                    async with limiter.slot(cost, self.stopping) as slot:
                        self.counters.requests += 1
                        self.counters.in_flight += 1
                        try:
                            resp = await self.client.messages(body, betas)
                        except errors.RateLimitError:
                            self.counters.rate_limited += 1
                            raise
                        finally:
                            self.counters.in_flight -= 1
                        slot.answered(resp.headers, resp.body.get("usage"))
                    if self.state is not None and limiter.snapshot_due():
                        self.state.set_meta("rate_limits", limiter.snapshot())
        except errors.APIError as exc:
            if exc.fatal:
                raise
            if exc.retryable:
                return Transient(p.row.id, exc.error_type, str(exc), attempts)
            return self._failed(p, exc, attempts, time.monotonic() - started)
        return self._answered(p, resp.body, resp.request_id, attempts, time.monotonic() - started)

    async def _retry_sleep(self, seconds: float) -> None:
        """The wait before a retry, cut short (the row is dropped) when the run stops."""
        with anyio.move_on_after(seconds):
            await self.stopping.wait()
        if self.stopping.is_set():
            raise GaveUp

    def _answered(
        self, p: Prepared, message: dict[str, Any], request_id: str | None, attempts: int, latency: float
    ) -> Result:
        usage = message.get("usage") or {}
        text, tool_input = answer_text(message)
        return Result(
            id=p.row.id,
            status="ok",
            text=text,
            tool_input=tool_input,
            model=message.get("model", self.profile.id),
            stop_reason=message.get("stop_reason"),
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            cache_read_input_tokens=usage.get("cache_read_input_tokens"),
            cache_creation_input_tokens=usage.get("cache_creation_input_tokens"),
            attempts=attempts,
            latency_s=round(latency, 4),
            request_id=request_id,
            images=p.sent,
            warnings=p.warnings,
            cost_usd=usage_cost(self.profile, usage),
            fields=dict(p.row.fields),
        )

    def _failed(self, p: Prepared, exc: errors.APIError, attempts: int, latency: float) -> Result:
        return Result(
            id=p.row.id,
            status="error",
            model=self.profile.id,
            attempts=attempts,
            latency_s=round(latency, 4),
            request_id=getattr(exc, "request_id", None),
            error_type=exc.error_type,
            error_message=getattr(exc, "message", str(exc)),
            images=p.sent,
            warnings=p.warnings,
            fields=dict(p.row.fields),
        )

    async def _write(self, outcomes: ObjectReceiveStream[Written]) -> None:
        """Record every outcome, and export parts, without the event loop ever waiting on disk.

        Answers were recorded by the request stage as they came (:class:`Recorded`); the other
        outcomes (bad rows, bad images) are recorded here in a worker thread, a few at a time (the
        state serialises its connection; each record is durable when it returns). Each counts as
        done only once durable. Parts are written by one background export at a time (the sink
        takes a lock too) while rows go on being recorded; the last export runs to its end even
        when the run is cancelled.
        """
        every_rows, every_s = self.job.run.part_rows, 30.0
        pending, last_export = 0, time.monotonic()
        export_done: anyio.Event | None = None
        async with anyio.create_task_group() as exports, outcomes:
            while batch := await _next_outcomes(outcomes, WRITE_BATCH):
                # Not abandoned on cancel: a thread's records finish, so the counters agree.
                todo = [o for o in batch if not isinstance(o, Recorded)]
                if todo:
                    await anyio.to_thread.run_sync(self._record_all, todo)
                for item in batch:
                    outcome = item.outcome if isinstance(item, Recorded) else item
                    if isinstance(outcome, Transient):
                        self.counters.left_for_next_run += 1
                        continue
                    self.counters.add(outcome)
                    if self.on_result is not None:
                        self.on_result(outcome)
                    pending += 1
                due = pending >= every_rows or time.monotonic() - last_export > every_s
                if due and (export_done is None or export_done.is_set()):
                    export_done = anyio.Event()
                    exports.start_soon(self._export, every_rows, export_done)
                    pending, last_export = 0, time.monotonic()
        # state.record is durable on return; the last part is written even when cancelled.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(partial(self.sink.export, max_rows=every_rows))

    def _record_all(self, batch: list[Outcome]) -> None:
        """In a worker thread: each outcome durable in the state, in order."""
        for outcome in batch:
            if isinstance(outcome, Transient):
                self.state.record_transient(
                    outcome.row_id, outcome.error_type, outcome.message, outcome.attempts
                )
            else:
                self.state.record(outcome)

    async def _export(self, max_rows: int, done: anyio.Event) -> None:
        try:
            with anyio.CancelScope(shield=True):  # a part is never left half written
                await anyio.to_thread.run_sync(partial(self.sink.export, max_rows=max_rows))
        finally:
            done.set()


#: Outcomes recorded per trip to the writer thread: enough to amortise the hop, few enough that
#: the counters and the progress line stay current.
WRITE_BATCH = 64


async def _next_outcomes(outcomes: ObjectReceiveStream[Written], limit: int) -> list[Written]:
    """The next outcome and whatever else is already waiting (at most ``limit``); [] at the end."""
    try:
        batch = [await outcomes.receive()]
    except anyio.EndOfStream:
        return []
    while len(batch) < limit:
        try:
            batch.append(outcomes.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return batch


#: Bytes base64-encoded per call (a multiple of 3, so the pieces join into one encoding): each call
#: holds the GIL for well under a millisecond, so the event loop's thread is never kept waiting.
B64_CHUNK = 3 * 64 * 1024


def b64_text(data: bytes) -> str:
    """``base64.b64encode(data)`` as text, in pieces (see :data:`B64_CHUNK`); run it in a thread."""
    view = memoryview(data)
    return b"".join(base64.b64encode(view[i : i + B64_CHUNK]) for i in range(0, len(view), B64_CHUNK)).decode(
        "ascii"
    )


def hold_limit(in_flight_limit: int, latency_known: bool, preparers: int) -> int:
    """How many prepared rows the request stage may hold: what the limiter would have in flight,
    as many again queued to go the moment a slot frees, and one. Before the first answer the
    window is only the ceiling (no latency yet), so hold what the preparers make meanwhile."""
    if not latency_known:
        return min(in_flight_limit, 2 * preparers + 1)
    return 2 * in_flight_limit + 1


def _named_once(message: str, images: list[str], index: int | None) -> str:
    """An image error's message without the path it begins with, when the row's message names
    the image already (``image 1 (path): ...``)."""
    from batcher.images.errors import without_label

    if not index:
        return message
    source = images[index - 1]
    return without_label(message, source, str(Path(source)))


async def _as_async(rows: Iterable[Row] | AsyncIterable[Row]) -> AsyncIterator[Row]:
    """Rows from either kind of iterable (the runner reads the manifest in a thread: async)."""
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
    else:
        for row in rows:
            yield row


def eta_s(counters: Counters, remaining: int) -> float | None:
    """Seconds left at the rate so far; None before there is a rate."""
    elapsed = time.monotonic() - counters.started
    if counters.finished == 0 or elapsed <= 0:
        return None
    return round(remaining * elapsed / counters.finished)
