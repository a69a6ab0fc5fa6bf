"""The request stage of the run core: a prepared row to its outcome.

One prepared row is planned once (the budget holds its worst case, the limiter counts its
estimate), admitted by the cache's write-first gate, held against the budget, sent through the rate
limits with retries, asked again while its structured answer does not fit the schema, and sent once
more after re-uploading a file the API no longer has. The online driver runs many of these at once
in one process; the Ray engine's workers run the same stage, with the cluster's limiter and budget
behind the same seams (:class:`RateLimits`, :class:`~batcher.core.seams.BudgetHook`), so neither
driver has request code of its own.

The stage records nothing: it returns the row's outcome (or None: not sent) and its driver makes it
durable.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from batcher.api import errors
from batcher.api.client import Client
from batcher.budget import BUDGET_STOP
from batcher.core import results
from batcher.core.cache import CachePoint
from batcher.core.failures import api_failure, failure_outcome
from batcher.core.outcomes import Counters, Outcome, Prepared
from batcher.core.plan import PlannedRequest, Planner
from batcher.core.prepare import RowPreparer
from batcher.core.seams import BudgetHook
from batcher.core.structured import StructuredOutput
from batcher.core.warmup import Admission, WarmupGate
from batcher.errors import SCHEMA_MISMATCH
from batcher.models import ModelProfile
from batcher.ratelimit import Cost, GaveUp
from batcher.records import Result
from batcher.retry import RetryPolicy, retrying


class LimitSlot(Protocol):
    """A request's place under the limits: told how the request was answered."""

    def answered(self, headers: Mapping[str, str], usage: Mapping[str, object] | None) -> None: ...


class RateLimits(Protocol):
    """What the request stage needs of the rate limits: one process's
    :class:`~batcher.ratelimit.Limiter`, or a cluster's (``batcher.engines.ray_limiter``)."""

    @property
    def latency_s(self) -> float | None: ...

    def in_flight_limit(self) -> int: ...

    def snapshot(self) -> Mapping[str, object]: ...

    def snapshot_due(self) -> bool: ...

    def describe(self) -> str: ...

    def wake(self) -> None: ...

    def slot(
        self, cost: Cost, give_up: anyio.Event | None = None
    ) -> AbstractAsyncContextManager[LimitSlot]: ...


class PrefixGate(Protocol):
    """The write-first gate of the prefix's cache breakpoint (:class:`~batcher.core.warmup.WarmupGate`
    and a way to wait on it): one process's (:class:`LocalPrefixGate`), or a cluster's, so that
    concurrent requests do not all pay for writing the same prefix."""

    async def turn(self, point: CachePoint, stopping: anyio.Event) -> Admission | None:
        """Wait while another request writes the prefix; ``read`` or ``write`` (this one goes
        alone to write it), or None once ``stopping`` is set."""
        ...

    def done(self, turn: Admission, answered: bool, sent_at: float) -> None:
        """The request that took ``turn`` (sent at ``sent_at``, ``time.monotonic``) is over."""
        ...

    def wake(self) -> None:
        """Waiters look again (at ``stopping``)."""
        ...


@dataclass
class LocalPrefixGate:
    """One process's write-first gate (made at the first request with a breakpoint)."""

    gate: WarmupGate | None = None
    _changed: anyio.Event | None = None

    async def turn(self, point: CachePoint, stopping: anyio.Event) -> Admission | None:
        if self.gate is None:
            self.gate = WarmupGate.for_point(point)
        while True:
            if stopping.is_set():
                return None
            turn = self.gate.admit(time.monotonic())
            if turn != "wait":
                return turn
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def done(self, turn: Admission, answered: bool, sent_at: float) -> None:
        if self.gate is None:
            return
        if answered:
            self.gate.answered(sent_at)
        else:
            self.gate.failed(writer=turn == "write")
        self.wake()

    def wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


@dataclass
class Requester:
    """A prepared row to its outcome (see the module doc). ``stop(reason)`` and ``fatal(exc)`` are
    the driver's: the budget running out and a fatal answer (401, 402, spend limit) stop the run."""

    profile: ModelProfile
    planner: Planner
    preparer: RowPreparer
    client: Client
    limiter: RateLimits
    counters: Counters
    stopping: anyio.Event
    stop: Callable[[str], None]
    fatal: Callable[[BaseException], None]
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rng: random.Random = field(default_factory=random.Random)
    budget: BudgetHook | None = None
    output: StructuredOutput | None = None
    #: the limits' picture every few seconds, for ``batcher status``
    on_snapshot: Callable[[Mapping[str, object]], None] | None = None
    #: the write-first gate of the prefix's cache breakpoint: this process's, or a cluster's
    prefix_gate: PrefixGate = field(default_factory=lambda: LocalPrefixGate())

    async def request(self, prepared: Prepared) -> tuple[Outcome | None, int]:
        """The row's outcome, asked again while the answer is a ``schema_mismatch`` with re-asks
        left (``[output] retry_invalid``), every paid answer added up, and how many re-asks it
        took. A re-ask the run cannot make (stopping, budget, a fatal answer, retries used up)
        leaves the last mismatch as the row's final result: it was paid. None: not sent."""
        outcome = await self.request_once(prepared)
        reasks = 0
        output = self.output
        while (
            output is not None
            and isinstance(outcome, Result)
            and outcome.error_type == SCHEMA_MISMATCH
            and reasks < output.retry_invalid
            and not self.stopping.is_set()
        ):
            again = await self.request_once(prepared)
            if again is None:
                break
            reasks += 1
            self.counters.reasks += 1
            if not isinstance(again, Result):
                break  # retries used up on the re-ask: the paid mismatch stands
            outcome = results.combined(outcome, again)
        return outcome, reasks

    async def request_once(self, prepared: Prepared) -> Outcome | None:
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
        held = await self.budget.reserve(plan) if self.budget is not None else 0.0
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
                self.fatal(exc)
                return None
            raise
        except GaveUp:
            outcome = None
        finally:
            self._warmup_done(turn, outcome, sent_at)
            if self.budget is not None:
                with anyio.CancelScope(shield=True):
                    await self.budget.settle(held, outcome)
        return outcome

    def wake(self) -> None:
        """The run is stopping: waits at the write-first gate look again."""
        self.prefix_gate.wake()

    # --- write first (batcher.core.warmup) ----------------------------------------------------

    async def _warmup_turn(self, plan: PlannedRequest) -> Admission | None:
        """None without a breakpoint; else wait while another request writes the prefix, and say
        whether this one reads it or goes alone to write it. Stopping ends the wait (the caller
        looks at ``stopping``)."""
        if plan.cache is None:
            return None
        return await self.prefix_gate.turn(plan.cache, self.stopping)

    def _warmup_done(self, turn: Admission | None, outcome: Outcome | None, sent_at: float) -> None:
        """The request that took ``turn`` is over: answered (it read or wrote the prefix), the gate
        opens; no answer (an error, retries used up, not sent), a writer's turn passes on."""
        if turn is None:
            return
        answered = isinstance(outcome, Result) and outcome.input_tokens is not None
        self.prefix_gate.done(turn, answered, sent_at)

    # --- sending ------------------------------------------------------------------------------

    async def _send(self, p: Prepared, plan: PlannedRequest | None = None, *, warm: bool = False) -> Outcome:
        """One row's request, retried as the policy says; the outcome, or :class:`GaveUp` when the
        run stops meanwhile, or a fatal ``APIError``. ``warm``: the prefix's cache entry is
        expected to be read (the limiter does not count it toward ITPM)."""
        plan = plan or self.planner.plan(p)
        body, betas = plan.body, plan.betas
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
                    if self.on_snapshot is not None and limiter.snapshot_due():
                        self.on_snapshot(limiter.snapshot())
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
