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
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from batcher.api.client import Client
from batcher.config import JobConfig
from batcher.core.outcomes import Counters, Outcome, Prepared, Recorded, Transient, Written
from batcher.core.plan import NO_PREFIX, Planner, SharedPrefix
from batcher.core.prepare import B64_CHUNK, RowPreparer, Stopped, b64_text, preparers_for
from batcher.core.request import Requester, hold_limit
from batcher.core.seams import BudgetHook, ImagePreparer, ResultSink, RunState
from batcher.core.signals import FatalRunError, fatal_grace
from batcher.core.structured import StructuredOutput
from batcher.core.writer import Writer
from batcher.files import FileUploader
from batcher.models import ModelProfile
from batcher.ratelimit import Limiter
from batcher.records import Result, Row
from batcher.retry import RetryPolicy

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
    _requester: Requester | None = None

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
        self._requester = None  # made again: the run's limiter, budget and policy
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
        if self._requester is not None:
            self._requester.wake()

    def fatal_stop(self, exc: BaseException) -> None:
        """Nothing more can succeed (401, 402, spend limit): send nothing new, and give the
        requests already sent a short grace to come back, since an answer the API has billed but
        that is never recorded would be paid for again by the next run."""
        self._fatal.append(exc)
        self.stop(f"fatal: {exc}")
        fatal_grace(self._cancel_work)

    def abandon(self, reason: str) -> None:
        """Stop now: requests in flight are dropped (the next run sends them again)."""
        self.stop(reason)
        if self._cancel_work is not None:
            self._cancel_work.cancel()

    # --- the request stage ------------------------------------------------------------------

    @property
    def requester(self) -> Requester:
        """The core's request stage (:mod:`batcher.core.request`) over this run's client, limits,
        budget and retry policy."""
        if self._requester is None:
            assert self.client is not None
            if self.limiter is None:
                self.limiter = Limiter.for_job(self.job)
            state = self.state
            self._requester = Requester(
                profile=self.profile,
                planner=self.planner,
                preparer=self.preparer,
                client=self.client,
                limiter=self.limiter,
                counters=self.counters,
                stopping=self.stopping,
                stop=self.stop,
                fatal=self.fatal_stop,
                policy=self.policy,
                rng=self.rng,
                budget=self.budget,
                output=self.output,
                on_snapshot=None if state is None else lambda snap: state.set_meta("rate_limits", snap),
            )
        return self._requester

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
                    outcome, reasks = await self.requester.request(prepared)
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
