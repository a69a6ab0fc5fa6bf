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

With structured output (``[output]``), an answer whose JSON does not fit the schema
(``schema_mismatch``) is asked again, up to ``retry_invalid`` times, within the row's request
stage: each re-ask passes the budget (its worst case held again, settled with what it cost) and the
limiter like any request, and the row's final result adds up every paid answer (attempts, tokens,
cost). The state counts the row's re-asks (``results.reasks``).

Read-ahead is bounded by what the limits let through, not by ``concurrency``: the request stage
holds at most about twice the limiter's in-flight window of prepared rows (each carries its
images), so ``concurrency = 500`` on a slow key does not prepare 500 images that wait for minutes.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from batcher.api import errors
from batcher.api.client import Client
from batcher.budget import BUDGET_STOP
from batcher.config import JobConfig
from batcher.core import results
from batcher.core.failures import api_failure, failure_outcome
from batcher.core.outcomes import Counters, Outcome, Prepared, Recorded, Transient, Written
from batcher.core.plan import NO_PREFIX, PlannedRequest, Planner, SharedPrefix
from batcher.core.prepare import B64_CHUNK, RowPreparer, Stopped, b64_text, preparers_for
from batcher.core.seams import BudgetHook, ImagePreparer, ResultSink, RunState
from batcher.core.signals import FATAL_GRACE_S
from batcher.core.structured import StructuredOutput
from batcher.core.warmup import Admission, WarmupGate
from batcher.core.writer import Writer
from batcher.errors import SCHEMA_MISMATCH
from batcher.files import FileUploader
from batcher.models import ModelProfile
from batcher.ratelimit import Cost, GaveUp, Limiter
from batcher.records import Result, Row
from batcher.retry import RetryPolicy, retrying

__all__ = [
    "B64_CHUNK",
    "Counters",
    "FatalRunError",
    "Outcome",
    "Pipeline",
    "Prepared",
    "Stopped",
    "Transient",
    "b64_text",
    "hold_limit",
]


class FatalRunError(Exception):
    """Nothing else this run sends can succeed (401, 402, spend limit): stop, keep what is done."""


@dataclass
class Pipeline:
    """The online driver: the core's read, prepare and write stages around its own request stage."""

    job: JobConfig
    profile: ModelProfile
    client: Client | None
    state: RunState | None
    sink: ResultSink | None
    pool: ImagePreparer | None
    counters: Counters = field(default_factory=Counters)
    #: the job's shared rate-limit picture (batcher.ratelimit); made from the job when not given
    limiter: Limiter | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rng: random.Random = field(default_factory=random.Random)
    on_result: Callable[[Result], None] | None = None
    #: ``[limits] budget_usd``: a batcher.budget.BudgetGate; None sends without a cap
    budget: BudgetHook | None = None
    #: transport "files": the job's uploader (made from the job when not given)
    uploader: FileUploader | None = None
    #: the job's [output] and its wire mode (the runner decides it): answers are checked and typed
    output: StructuredOutput | None = None
    #: the few-shot examples and the cache breakpoint every row's request shares (the runner
    #: settles them before anything is sent)
    prefix: SharedPrefix = NO_PREFIX

    _fatal: list[BaseException] = field(default_factory=list)
    #: prepared rows the request stage holds (waiting for the limits or in flight)
    _holding: int = 0
    _hold_changed: anyio.Event | None = None
    _preparers: int = 2
    _cancel_work: anyio.CancelScope | None = None
    #: the write-first gate of the prefix's cache breakpoint (made at the first request with one)
    warmup: WarmupGate | None = None
    _warmup_changed: anyio.Event | None = None

    def __post_init__(self) -> None:
        self.stopping = anyio.Event()
        self.planner = Planner.for_job(self.job, self.profile, self.output, self.prefix)
        self.settings = self.planner.settings
        self.preparer = RowPreparer.for_job(
            self.job,
            self.profile,
            self.pool,
            downloader=self.client,
            state=self.state,
            stopping=self.stopping,
            uploader=self.uploader,
            on_fatal=self.fatal_stop,
            shared_images=self.prefix.image_count,
        )
        self.uploader = self.preparer.uploader

    # --- the whole run ----------------------------------------------------------------------

    async def run(self, rows: Iterable[Row] | AsyncIterable[Row]) -> Counters:
        assert self.state is not None and self.sink is not None and self.pool is not None
        concurrency = self.job.run.concurrency
        if self.limiter is None:
            self.limiter = Limiter.for_job(self.job)
        self._hold_changed = anyio.Event()
        preparers = self._preparers = preparers_for(self.pool)
        writer = self.writer = Writer(
            self.state, self.sink, self.counters, self.job.run.part_rows, on_result=self.on_result
        )
        prep = self.preparer
        to_prepare_send, to_prepare = anyio.create_memory_object_stream[Row](concurrency)
        # Prepared rows are heavy (base64 images): only a few wait between the stages.
        to_request_send, to_request = anyio.create_memory_object_stream[Prepared](preparers)
        results_send, results = anyio.create_memory_object_stream[Written](concurrency * 2)
        # Any stage may find that nothing else can succeed (a 401 on an upload or a message).
        fatal = self._fatal = []
        async with anyio.create_task_group() as outer:
            outer.start_soon(writer.write, results)
            try:
                async with anyio.create_task_group() as tg:
                    self._cancel_work = tg.cancel_scope
                    tg.start_soon(prep.feed, rows, to_prepare_send, results_send.clone(), self.counters)
                    async with to_prepare, to_request_send:
                        for _ in range(preparers):
                            tg.start_soon(
                                prep.stage, to_prepare.clone(), to_request_send.clone(), results_send.clone()
                            )
                    async with to_request:
                        for _ in range(concurrency):
                            tg.start_soon(self._request, to_request.clone(), results_send.clone(), writer)
            finally:
                results_send.close()
        # The last picture of the limits, for `batcher status` (snapshots are otherwise ~5 s apart).
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
        self.preparer.cancel_unsent()
        # Waits for the limits look at ``stopping`` when woken; the request stage's hold too.
        if self.limiter is not None:
            self.limiter.wake()
        if self._hold_changed is not None:
            self._hold_changed.set()
        self._warmup_notify()

    def fatal_stop(self, exc: BaseException) -> None:
        """Nothing more can succeed (401, 402, spend limit): send nothing new, and give the
        requests already sent a short grace to come back, since an answer the API has billed but
        that is never recorded would be paid for again by the next run."""
        self._fatal.append(exc)
        self.stop(f"fatal: {exc}")
        scope = self._cancel_work
        if scope is not None:
            scope.deadline = min(scope.deadline, anyio.current_time() + FATAL_GRACE_S)

    def abandon(self, reason: str) -> None:
        """Stop now: requests in flight are dropped (the next run sends them again)."""
        self.stop(reason)
        if self._cancel_work is not None:
            self._cancel_work.cancel()

    # --- the request stage ------------------------------------------------------------------

    async def _request(
        self, rows: ObjectReceiveStream[Prepared], results: ObjectSendStream[Written], writer: Writer
    ) -> None:
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
                    outcome, reasks = await self._request_reasking(prepared)
                finally:
                    self._holding -= 1
                    assert self._hold_changed is not None
                    self._hold_changed.set()
                if outcome is None:
                    continue  # not sent: with the run stopping, the rest drains the same way
                # Durable before anything else happens, by this task: an answer the API has billed
                # waits in no queue, so a kill -9 pays twice only for requests truly in flight.
                with anyio.CancelScope(shield=True):
                    if reasks and isinstance(outcome, Result):
                        await anyio.to_thread.run_sync(
                            partial(writer.record_all, [outcome], {outcome.id: reasks})
                        )
                    else:
                        await anyio.to_thread.run_sync(writer.record_all, [outcome])
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

    async def _request_reasking(self, prepared: Prepared) -> tuple[Outcome | None, int]:
        """:meth:`_request_one`, and again while the answer is a ``schema_mismatch`` with re-asks
        left (``[output] retry_invalid``); returns the row's outcome, every paid answer added up,
        and how many re-asks it took. A re-ask the run cannot make (stopping, budget, a fatal
        answer, retries used up) leaves the last mismatch as the row's final result: it was paid."""
        outcome = await self._request_one(prepared)
        reasks = 0
        output = self.output
        while (
            output is not None
            and isinstance(outcome, Result)
            and outcome.error_type == SCHEMA_MISMATCH
            and reasks < output.retry_invalid
            and not self.stopping.is_set()
        ):
            again = await self._request_one(prepared)
            if again is None:
                break
            reasks += 1
            self.counters.reasks += 1
            if not isinstance(again, Result):
                break  # retries used up on the re-ask: the paid mismatch stands
            outcome = results.combined(outcome, again)
        return outcome, reasks

    async def _request_one(self, prepared: Prepared) -> Outcome | None:
        """One row's request; None: not sent (stopping, budget) or the job is over (fatal)."""
        if self.stopping.is_set():
            return None
        # Planned once: the budget holds its worst case, the limiter counts its estimate.
        plan = self.planner.plan(prepared)
        # Write first: with a cache breakpoint, wait while another request writes the prefix.
        turn = await self._warmup_turn(plan)
        if self.stopping.is_set():
            self._warmup_done(turn, None, 0.0)
            return None
        # The budget hook: hold the row's worst case before sending; none left, stop.
        held = self.budget.reserve(plan) if self.budget is not None else 0.0
        if held is None:
            self._warmup_done(turn, None, 0.0)
            self.stop(BUDGET_STOP)
            return None
        outcome: Outcome | None = None
        sent_at = time.monotonic()
        try:
            outcome = await self._send_with_files(prepared, plan, warm=turn == "read")
        except errors.APIError as exc:
            if exc.fatal:
                self.fatal_stop(exc)
                return None
            raise
        except GaveUp:
            outcome = None
        finally:
            self._warmup_done(turn, outcome, sent_at)
        if self.budget is not None:
            self.budget.settle(held, outcome)
        return outcome

    # --- write first (batcher.core.warmup) ----------------------------------------------------

    async def _warmup_turn(self, plan: PlannedRequest) -> Admission | None:
        """None without a breakpoint; else wait while another request writes the prefix, and say
        whether this one reads it or goes alone to write it. Stopping ends the wait (the caller
        looks at ``stopping``)."""
        if plan.cache is None:
            return None
        if self.warmup is None:
            self.warmup = WarmupGate.for_point(plan.cache)
        gate = self.warmup
        while True:
            if self.stopping.is_set():
                return None
            turn = gate.admit(time.monotonic())
            if turn != "wait":
                return turn
            if self._warmup_changed is None:
                self._warmup_changed = anyio.Event()
            await self._warmup_changed.wait()

    def _warmup_done(self, turn: Admission | None, outcome: Outcome | None, sent_at: float) -> None:
        """The request that took ``turn`` is over: answered (it read or wrote the prefix), the gate
        opens; no answer (an error, retries used up, not sent), a writer's turn passes on."""
        if turn is None or self.warmup is None:
            return
        if isinstance(outcome, Result) and outcome.input_tokens is not None:
            self.warmup.answered(sent_at)
        else:
            self.warmup.failed(writer=turn == "write")
        self._warmup_notify()

    def _warmup_notify(self) -> None:
        if self._warmup_changed is not None:
            self._warmup_changed.set()
            self._warmup_changed = None

    async def _send(self, p: Prepared, plan: PlannedRequest | None = None, *, warm: bool = False) -> Outcome:
        """One row's request, retried as the policy says; the outcome, or :class:`GaveUp` when the
        run stops meanwhile, or a fatal ``APIError``. ``warm``: the prefix's cache entry is
        expected to be read (the limiter does not count it toward ITPM)."""
        assert self.client is not None
        plan = plan or self.planner.plan(p)
        body, betas = plan.body, plan.betas
        if self.limiter is None:
            self.limiter = Limiter.for_job(self.job)
        limiter = self.limiter
        prefix = plan.cache.prefix_tokens if plan.cache is not None else 0
        cost = Cost(plan.tokens.input, plan.max_tokens, prefix_tokens=prefix, warm=warm and prefix > 0)
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
                return failure_outcome(api_failure(exc, attempts), p.row, self.profile)
            return results.refused(
                self.profile,
                row_id=p.row.id,
                error_type=exc.error_type,
                message=getattr(exc, "message", str(exc)),
                images=p.sent,
                warnings=p.warnings,
                fields=dict(p.row.fields),
                attempts=attempts,
                request_id=getattr(exc, "request_id", None),
                latency_s=round(time.monotonic() - started, 4),
            )
        return results.answered(
            self.profile,
            resp.body,
            row_id=p.row.id,
            images=p.sent,
            warnings=p.warnings,
            fields=dict(p.row.fields),
            attempts=attempts,
            request_id=resp.request_id,
            latency_s=round(time.monotonic() - started, 4),
            output=self.output,
            max_tokens=plan.max_tokens,
        )

    async def _retry_sleep(self, seconds: float) -> None:
        """The wait before a retry, cut short (the row is dropped) when the run stops."""
        with anyio.move_on_after(seconds):
            await self.stopping.wait()
        if self.stopping.is_set():
            raise GaveUp

    async def _send_with_files(self, p: Prepared, plan: PlannedRequest, *, warm: bool = False) -> Outcome:
        """``_send``, and once more after uploading again any file id the API answered 404 for."""
        from batcher.files import UploadError, stale_file_ids

        outcome = await self._send(p, plan, warm=warm)
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
        for i, image in p.uploaded.items():
            if ids[i] in stale:
                try:
                    parts[i] = await self.preparer.file_part(image, p.sent[i], stale=ids[i])
                except UploadError as exc:
                    return failure_outcome(
                        self.preparer.upload_failure(p.row, exc, i + 1), p.row, self.profile
                    )
        again = await self._send(Prepared(p.row, parts, p.sent, p.warnings, p.uploaded), warm=warm)
        if isinstance(again, Result):
            again.attempts = (again.attempts or 0) + (outcome.attempts or 0)
        else:
            again.attempts += outcome.attempts or 0
        return again


def hold_limit(in_flight_limit: int, latency_known: bool, preparers: int) -> int:
    """How many prepared rows the request stage may hold: what the limiter would have in flight,
    as many again queued to go the moment a slot frees, and one. Before the first answer the
    window is only the ceiling (no latency yet), so hold what the preparers make meanwhile."""
    if not latency_known:
        return min(in_flight_limit, 2 * preparers + 1)
    return 2 * in_flight_limit + 1
