"""A Ray engine's worker: rows in, outcomes out, through the run core.

Each worker actor (:class:`RowWorker`, an async actor) has its own API client and image pool, and
runs the core's two row stages on each row it is given: the :class:`~batcher.core.prepare.RowPreparer`
(fetch, decode, size, encode), then the :class:`~batcher.core.request.Requester` (plan, budget,
limits, retries, re-asks). Its limits and budget are the cluster's
(:class:`~batcher.engines.ray_limiter.RemoteLimiter`, :class:`~batcher.engines.ray_limiter.RemoteBudget`).
It records nothing: each :class:`Reply` goes back to the driver, which alone writes the state and
the results.

Nothing here imports ``ray``: the driver wraps :class:`RowWorker` with ``ray.remote``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import anyio

from batcher.api.client import Client
from batcher.config import JobConfig
from batcher.core.failures import failure_outcome
from batcher.core.outcomes import Counters, Outcome, Prepared
from batcher.core.plan import NO_PREFIX, Planner, SharedPrefix
from batcher.core.prepare import RowPreparer
from batcher.core.request import Requester
from batcher.core.structured import StructuredOutput
from batcher.engines.ray_limiter import RemoteBudget, RemoteLimiter, RemotePrefixGate
from batcher.images.pool import ImagePool
from batcher.models import ModelProfile
from batcher.records import Row
from batcher.retry import RetryPolicy


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs to send a job's rows (sent once, when the worker starts)."""

    job: JobConfig
    profile: ModelProfile
    api_key: str = field(repr=False)
    base_url: str
    policy: RetryPolicy
    output: StructuredOutput | None = None
    prefix: SharedPrefix = NO_PREFIX
    #: processes of the worker's image pool
    image_workers: int = 1
    #: the cluster's budget caps this job ([limits] budget_usd)
    budgeted: bool = False


@dataclass(frozen=True)
class Tally:
    """A worker's counts since its last reply (the driver adds them to the run's counters)."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    reasks: int = 0


@dataclass(frozen=True)
class Reply:
    """One row's end on a worker: its outcome to record (None: not sent, the next run sends it),
    the re-asks it took, and why the worker stopped, if it did (the budget; a fatal answer)."""

    row_id: str
    outcome: Outcome | None
    reasks: int = 0
    tally: Tally = Tally()
    stop_reason: str | None = None
    fatal: str | None = None


class RowWorker:
    """The body of a worker actor (see the module doc). ``limiter``: the cluster's limiter actor."""

    def __init__(self, setup: WorkerSetup, limiter: Any, name: str) -> None:
        self.setup = setup
        self.handle = limiter
        self.name = name
        self.counters = Counters()
        self._sent = Tally()
        self.stopping = anyio.Event()
        self._stop_reason: str | None = None
        self._fatal: str | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._requester: Requester | None = None
        self._preparer: RowPreparer | None = None
        self._starting = anyio.Lock()

    async def start(self) -> str:
        """Open the client and the image pool (on the actor's event loop); the worker's name."""
        async with self._starting:
            if self._requester is None:
                await self._open()
        return self.name

    async def _open(self) -> None:
        setup, job = self.setup, self.setup.job
        stack = self._stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            Client(
                setup.api_key,
                setup.base_url,
                max_connections=job.run.concurrency,
                timeout_s=job.run.request_timeout_s,
            )
        )
        pool = await stack.enter_async_context(ImagePool(workers=setup.image_workers))
        preparer = self._preparer = RowPreparer.for_job(
            job,
            setup.profile,
            pool,
            downloader=client,
            state=None,
            stopping=self.stopping,
            on_fatal=self._fatal_stop,
            shared_images=setup.prefix.image_count,
        )
        self._requester = Requester(
            profile=setup.profile,
            planner=Planner.for_job(job, setup.profile, setup.output, setup.prefix),
            preparer=preparer,
            client=client,
            limiter=RemoteLimiter(self.handle, self.name),
            counters=self.counters,
            stopping=self.stopping,
            stop=self.stop_now,
            fatal=self._fatal_stop,
            policy=setup.policy,
            budget=RemoteBudget(self.handle) if setup.budgeted else None,
            output=setup.output,
            prefix_gate=RemotePrefixGate(self.handle, self.name),
        )

    async def process(self, row: Row) -> Reply:
        """Prepare and send one row; its outcome goes back, never into a state."""
        await self.start()
        requester, preparer = self._requester, self._preparer
        assert requester is not None and preparer is not None
        outcome: Outcome | None = None
        reasks = 0
        if not self.stopping.is_set():
            got = await preparer.prepare(row)
            if isinstance(got, Prepared):
                outcome, reasks = await requester.request(got)
            elif got is not None:
                outcome = failure_outcome(got, row, self.setup.profile)
        return Reply(row.id, outcome, reasks, self._tally(), self._stop_reason, self._fatal)

    async def stop(self, reason: str) -> None:
        """The driver stops the run: nothing new is prepared or sent; requests in flight finish."""
        self.stop_now(reason)

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    def stop_now(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self.stopping.set()
        if self._preparer is not None:
            self._preparer.cancel_unsent()
        if self._requester is not None:
            self._requester.limiter.wake()
            self._requester.wake()

    def _fatal_stop(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = str(exc)
        self.stop_now(f"fatal: {exc}")

    def _tally(self) -> Tally:
        """The counts since the last reply (replies interleave; their sum is the worker's total)."""
        c, sent = self.counters, self._sent
        now = Tally(c.requests, c.retries, c.rate_limited, c.reasks)
        self._sent = now
        return Tally(
            now.requests - sent.requests,
            now.retries - sent.retries,
            now.rate_limited - sent.rate_limited,
            now.reasks - sent.reasks,
        )
