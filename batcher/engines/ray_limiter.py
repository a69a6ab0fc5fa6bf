"""One rate budget for a Ray cluster: the job's :class:`~batcher.ratelimit.Limiter` in a named actor.

Ray Data paces each actor on its own, so a cluster's rate is qps × actors and a 429 one worker sees
means nothing to the others. Here a single named actor (:class:`LimiterService`, one per run,
owned by the driver) owns the job's one :class:`Limiter`; every worker asks it before each request
and tells it how each ended. The 429 pause, the AIMD window, the learned input-token ratio and the limits
learned from headers are therefore those of one machine, for every worker at once.

Workers use :class:`RemoteLimiter`, which has the surface the online request code uses
(``slot(cost, give_up)`` as an async context manager, ``snapshot``, ``snapshot_due``,
``in_flight_limit``, ``latency_s``, ``wake``, ``describe``): the request code does not know the
limiter is remote. Each answer from the actor carries a small :class:`LimiterView`, so the
synchronous parts of that surface read the latest picture without a round trip.

What crosses the wire is small picklable dataclasses (:class:`Grant`, :class:`LimiterView`,
:class:`Failure`, and :class:`~batcher.ratelimit.Cost`); an exception is never sent, only what the
limiter needs of it. Tickets are owned: a worker that dies leaves tickets the driver hands back
with :meth:`LimiterService.forget` (``in_flight`` would otherwise stay raised for good).

``ray`` is imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio

from batcher import facts
from batcher.api import errors
from batcher.budget import Budget
from batcher.core.warmup import Admission, WarmupGate
from batcher.ratelimit import SNAPSHOT_EVERY_S, Cost, GaveUp, Limiter, Limits, Ticket, describe

if TYPE_CHECKING:
    from batcher.core.cache import CachePoint
    from batcher.core.outcomes import Outcome
    from batcher.core.plan import PlannedRequest

#: Ray namespace of batcher's actors (a cluster may run other jobs' actors beside them).
NAMESPACE: Final = "batcher"
#: Concurrent calls the limiter actor serves (every worker's waiting acquires at once).
ACTOR_CONCURRENCY: Final = 1000

FailureKind = Literal["status", "timeout", "connection", "response", "other"]


# --- the wire ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimiterView:
    """The part of the limiter's picture a worker reads synchronously, sent with every answer."""

    in_flight_limit: int
    latency_s: float | None
    snapshot: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Grant:
    """A request's place under the cluster's limits: settle it with ``answered``/``failed``, then
    ``release`` it."""

    ticket: int
    view: LimiterView


@dataclass(frozen=True, slots=True)
class Failure:
    """What the limiter needs to know of an :class:`~batcher.api.errors.APIError` (the exception
    itself is not sent: it may hold a response, and its class must be rebuilt on the other side)."""

    kind: FailureKind
    status: int | None = None
    error_type: str = "api_error"
    headers: dict[str, str] = field(default_factory=dict)
    error_code: str | None = None

    @classmethod
    def of(cls, exc: errors.APIError) -> Failure:
        if isinstance(exc, errors.APIStatusError):
            return cls("status", exc.status, exc.error_type, dict(exc.headers), exc.error_code)
        if isinstance(exc, errors.APITimeoutError):
            return cls("timeout", error_type=exc.error_type)
        if isinstance(exc, errors.APIConnectionError):
            return cls("connection", error_type=exc.error_type)
        if isinstance(exc, errors.APIResponseError):
            return cls("response", error_type=exc.error_type)
        return cls("other", error_type=exc.error_type)

    def error(self) -> errors.APIError:
        """The error again, as the limiter's :meth:`~batcher.ratelimit.Limiter.failed` reads it."""
        if self.kind == "status" and self.status is not None:
            kind = errors.status_error_class(self.status)
            if self.error_code == facts.SPEND_LIMIT_CODE:
                kind = errors.SpendLimitError
            return kind(
                self.status,
                self.error_type,
                "",
                request_id=None,
                headers=self.headers,
                error_code=self.error_code,
            )
        by_kind: dict[str, type[errors.APIError]] = {
            "timeout": errors.APITimeoutError,
            "connection": errors.APIConnectionError,
            "response": errors.APIResponseError,
        }
        return by_kind.get(self.kind, errors.APIError)(self.error_type)


# --- the actor ---------------------------------------------------------------------------------


class ManualClock:
    """A clock that moves only when told (tests: grants counted per window without wall time)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class LimiterService:
    """The job's one :class:`Limiter`, served to every worker (the body of the Ray actor).

    ``manual_clock``: the limiter's clock moves only by :meth:`advance` (tests)."""

    def __init__(
        self,
        seed: Limits,
        concurrency: int,
        source: str,
        *,
        manual_clock: bool = False,
        budget: Budget | None = None,
    ) -> None:
        self._clock: ManualClock | None = ManualClock() if manual_clock else None
        clock = self._clock or time.monotonic
        self.limiter = Limiter(seed, concurrency, source, clock=clock)
        #: ``[limits] budget_usd`` for the whole cluster (None: no cap): one hold per request
        self.budget = budget
        #: the prompt cache's write-first gate for the whole cluster (made at the first request
        #: with a breakpoint): one request writes the prefix while every other waits
        self.prefix: WarmupGate | None = None
        self._prefix_changed = anyio.Event()
        self._ids = itertools.count(1)
        self._tickets: dict[int, tuple[str, Ticket]] = {}
        #: acquires waiting, by the caller's request id: the event gives them up
        self._waiting: dict[str, anyio.Event] = {}
        self._abandoned: set[str] = set()
        self.granted = 0

    def _view(self) -> LimiterView:
        lim = self.limiter
        return LimiterView(lim.in_flight_limit(), lim.latency_s, lim.snapshot())

    def _grant(self, owner: str, ticket: Ticket) -> Grant:
        number = next(self._ids)
        self._tickets[number] = (owner, ticket)
        self.granted += 1
        return Grant(number, self._view())

    async def acquire(self, owner: str, request: str, cost: Cost) -> Grant | None:
        """Wait until ``cost`` fits the cluster's budget and take it; None when the caller gave
        the request up meanwhile (:meth:`abandon`): nothing was taken."""
        if request in self._abandoned:
            self._abandoned.discard(request)
            return None
        give_up = self._waiting[request] = anyio.Event()
        try:
            ticket = await self.limiter.acquire(cost, give_up)
        except GaveUp:
            return None
        finally:
            self._waiting.pop(request, None)
        return self._grant(owner, ticket)

    async def try_acquire(self, owner: str, cost: Cost) -> Grant | None:
        """Take ``cost`` if it fits now, else None (no wait)."""
        lim = self.limiter
        if lim.delay(lim.cost_of(cost), lim.clock()) > 0:
            return None
        return self._grant(owner, lim.acquire_now(cost))

    async def abandon(self, request: str) -> None:
        """The caller stopped waiting for ``request`` (its run is stopping)."""
        event = self._waiting.get(request)
        if event is None:
            self._abandoned.add(request)  # not arrived yet (or done: the caller releases a grant)
        else:
            event.set()
            self.limiter.wake()
            self._prefix_moved()

    async def answered(
        self, ticket: int, headers: dict[str, str], usage: dict[str, Any] | None
    ) -> LimiterView:
        held = self._tickets.get(ticket)
        if held is not None:
            self.limiter.answered(held[1], headers, usage)
        return self._view()

    async def failed(self, ticket: int, failure: Failure) -> LimiterView:
        held = self._tickets.get(ticket)
        if held is not None:
            self.limiter.failed(held[1], failure.error())
        return self._view()

    async def release(self, ticket: int) -> LimiterView:
        held = self._tickets.pop(ticket, None)
        if held is not None:
            self.limiter.release(held[1])
        return self._view()

    async def forget(self, owner: str) -> int:
        """Release every ticket ``owner`` holds (a worker that died); how many there were. Their
        charges stay taken: the requests may have reached the API."""
        mine = [n for n, (who, _) in self._tickets.items() if who == owner]
        for number in mine:
            self.limiter.release(self._tickets.pop(number)[1])
        return len(mine)

    async def view(self) -> LimiterView:
        return self._view()

    # -- the cluster's write-first gate (batcher.core.warmup) --

    async def prefix_turn(self, request: str, point: CachePoint) -> Admission | None:
        """Wait while another worker's request writes the prefix; ``read`` or ``write``, or None
        when the caller gave the wait up (:meth:`abandon`)."""
        if request in self._abandoned:
            self._abandoned.discard(request)
            return None
        give_up = self._waiting[request] = anyio.Event()
        try:
            if self.prefix is None:
                self.prefix = WarmupGate.for_point(point)
            while not give_up.is_set():
                turn = self.prefix.admit(self.limiter.clock())
                if turn != "wait":
                    return turn
                await self._prefix_changed.wait()
            return None
        finally:
            self._waiting.pop(request, None)

    async def prefix_done(self, turn: Admission, answered: bool, age_s: float) -> None:
        """The request that took ``turn`` is over; ``age_s``: seconds since it was sent (the
        worker's clock is not this one's)."""
        if self.prefix is None:
            return
        if answered:
            self.prefix.answered(self.limiter.clock() - age_s)
        else:
            self.prefix.failed(writer=turn == "write")
        self._prefix_moved()

    def _prefix_moved(self) -> None:
        self._prefix_changed.set()
        self._prefix_changed = anyio.Event()

    # -- the cluster's budget (batcher.budget.Budget, held here so every worker draws on one) --

    async def reserve_usd(self, usd: float) -> bool:
        """Hold ``usd`` for a request about to be sent; False (latched): the budget cannot take it."""
        return True if self.budget is None else self.budget.reserve(usd)

    async def settle_usd(self, held: float, actual: float) -> None:
        if self.budget is not None:
            self.budget.settle(held, actual)

    async def budget_now(self) -> Budget | None:
        """The budget as it stands (the driver's copy for its summary line)."""
        return self.budget

    async def stats(self) -> dict[str, int]:
        """Counts for tests and the bench: grants so far, tickets held, acquires waiting."""
        return {"granted": self.granted, "held": len(self._tickets), "waiting": len(self._waiting)}

    async def advance(self, seconds: float) -> LimiterView:
        """Move the manual clock (tests only) and let every waiter look again."""
        if self._clock is None:
            raise RuntimeError("advance: this limiter runs on the real clock")
        self._clock.now += seconds
        self.limiter.wake()
        self._prefix_moved()
        return self._view()


def limiter_name(job_key: str) -> str:
    """The actor's name for one job (``job_key``: e.g. the output folder's hash)."""
    return f"batcher-limiter-{job_key}"


def start_limiter(
    job_key: str,
    seed: Limits,
    concurrency: int,
    source: str,
    *,
    manual_clock: bool = False,
    budget: Budget | None = None,
) -> Any:
    """The job's limiter actor, owned by the driver that starts it: it outlives any worker, and
    dies with the driver (a run's limits and budget mean nothing to the next run), or the driver
    kills it at the end with :func:`stop_limiter`. ``job_key`` is unique to the run."""
    import ray

    actor = ray.remote(LimiterService).options(
        name=limiter_name(job_key),
        namespace=NAMESPACE,
        max_concurrency=ACTOR_CONCURRENCY,
        num_cpus=0,
    )
    return actor.remote(seed, concurrency, source, manual_clock=manual_clock, budget=budget)


def find_limiter(job_key: str) -> Any:
    """A worker's handle on the job's limiter actor, by name."""
    import ray

    return ray.get_actor(limiter_name(job_key), namespace=NAMESPACE)


def stop_limiter(handle: Any) -> None:
    import ray

    ray.kill(handle)


# --- the worker's side -------------------------------------------------------------------------


class LimiterPicture:
    """The cluster limiter's latest :class:`LimiterView`, read without a round trip: the surface
    of :class:`Limiter` that progress lines and read-ahead use. ``view`` is None until the first
    answer from the actor."""

    view: LimiterView | None = None

    @property
    def latency_s(self) -> float | None:
        return None if self.view is None else self.view.latency_s

    def in_flight_limit(self) -> int:
        return 1 if self.view is None else self.view.in_flight_limit

    def snapshot(self) -> dict[str, Any]:
        return {} if self.view is None else dict(self.view.snapshot)

    def describe(self) -> str:
        return describe(self.snapshot()) if self.view is not None else ""


class RemoteLimiter(LimiterPicture):
    """The cluster's limiter as a worker sees it: the surface of :class:`Limiter` the request code
    uses, each wait and settlement a call to the actor (awaited as an ObjectRef: the event loop
    never blocks)."""

    def __init__(self, handle: Any, owner: str) -> None:
        self.handle = handle
        self.owner = owner
        self._requests = itertools.count(1)
        self._last_snapshot = -float("inf")

    def snapshot_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_snapshot < SNAPSHOT_EVERY_S:
            return False
        self._last_snapshot = now
        return True

    def wake(self) -> None:
        """Waits end through their ``give_up`` event (see :meth:`acquire`); nothing to do here."""

    # -- the calls --

    async def refresh(self) -> LimiterView:
        view: LimiterView = await self.handle.view.remote()
        self.view = view
        return view

    async def acquire(self, cost: Cost, give_up: anyio.Event | None = None) -> Grant:
        """Wait for the cluster's budget; ``give_up`` set ends the wait with :class:`GaveUp`
        (a grant that crossed the give-up on the wire is handed back)."""
        request = f"{self.owner}:{next(self._requests)}"
        ref = self.handle.acquire.remote(self.owner, request, cost)
        got, answer = await _unless_given_up(ref, give_up or anyio.Event())
        if not got:
            # Given up: tell the actor, then take its answer (a grant made meanwhile goes back).
            with anyio.CancelScope(shield=True):
                await self.handle.abandon.remote(request)
                late: Grant | None = await ref
                if late is not None:
                    await self.handle.release.remote(late.ticket)
            raise GaveUp
        grant: Grant | None = answer
        if grant is None:
            raise GaveUp
        self.view = grant.view
        return grant

    async def answered(
        self, grant: Grant, headers: Mapping[str, str], usage: Mapping[str, Any] | None
    ) -> None:
        self.view = await self.handle.answered.remote(grant.ticket, dict(headers), dict(usage or {}))

    async def failed(self, grant: Grant, exc: errors.APIError) -> None:
        self.view = await self.handle.failed.remote(grant.ticket, Failure.of(exc))

    async def release(self, grant: Grant) -> None:
        self.view = await self.handle.release.remote(grant.ticket)

    @contextlib.asynccontextmanager
    async def slot(self, cost: Cost, give_up: anyio.Event | None = None) -> AsyncIterator[RemoteSlot]:
        """As :meth:`Limiter.slot`: an API error leaving the block settles the grant as that
        error; any exit releases it (shielded: a cancelled worker still frees its place)."""
        grant = await self.acquire(cost, give_up)
        held = RemoteSlot(self, grant)
        try:
            yield held
        except errors.APIError as exc:
            with anyio.CancelScope(shield=True):
                await held.settled()
                await self.failed(grant, exc)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await held.settled()
                await self.release(grant)


@dataclass(slots=True)
class RemoteSlot:
    """A request's place under the cluster's limits (see :meth:`RemoteLimiter.slot`).

    :meth:`answered` is synchronous, as :class:`~batcher.ratelimit.Slot`'s is: it sends the call
    and the slot awaits it before releasing (calls from one caller reach the actor in order)."""

    limiter: RemoteLimiter
    grant: Grant
    _pending: list[Any] = field(default_factory=list)

    def answered(self, headers: Mapping[str, str], usage: Mapping[str, Any] | None) -> None:
        handle = self.limiter.handle
        self._pending.append(handle.answered.remote(self.grant.ticket, dict(headers), dict(usage or {})))

    async def settled(self) -> None:
        while self._pending:
            self.limiter.view = await self._pending.pop(0)


class RemoteBudget:
    """The cluster's ``[limits] budget_usd`` as a worker's request stage sees it (the core's
    :class:`~batcher.core.seams.BudgetHook`): each hold and settlement a call to the limiter actor,
    so no two workers spend the same dollar."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def reserve(self, plan: PlannedRequest) -> float | None:
        usd = plan.worst_usd
        took: bool = await self.handle.reserve_usd.remote(usd)
        return usd if took else None

    async def settle(self, held: float, outcome: Outcome | None) -> None:
        await self.handle.settle_usd.remote(held, getattr(outcome, "cost_usd", None) or 0.0)


class RemotePrefixGate:
    """The cluster's write-first gate as a worker's request stage sees it (the core's
    :class:`~batcher.core.request.PrefixGate`): one request in the whole cluster writes the
    prefix, every other waits for it and then reads."""

    def __init__(self, handle: Any, owner: str) -> None:
        self.handle = handle
        self.owner = owner
        self._requests = itertools.count(1)

    async def turn(self, point: CachePoint, stopping: anyio.Event) -> Admission | None:
        request = f"{self.owner}:prefix:{next(self._requests)}"
        ref = self.handle.prefix_turn.remote(request, point)
        got, turn = await _unless_given_up(ref, stopping)
        if got:
            result: Admission | None = turn
            return result
        # Given up: tell the actor, then take its answer (a turn granted meanwhile passes on).
        with anyio.CancelScope(shield=True):
            await self.handle.abandon.remote(request)
            late: Admission | None = await ref
            if late is not None:
                await self.handle.prefix_done.remote(late, False, 0.0)
        return None

    def done(self, turn: Admission, answered: bool, sent_at: float) -> None:
        # Not awaited: calls from one caller reach the actor in order, and nothing here waits on it.
        self.handle.prefix_done.remote(turn, answered, max(0.0, time.monotonic() - sent_at))

    def wake(self) -> None:
        """Waits end through their ``stopping`` event (see :meth:`turn`)."""


async def _unless_given_up(ref: Any, give_up: anyio.Event) -> tuple[bool, Any]:
    """``(True, value)`` once ``ref`` is ready, or ``(False, None)`` if ``give_up`` is set first."""
    outcome: list[Any] = []

    async def wait_value() -> None:
        outcome.append(await ref)
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_value)
        await give_up.wait()
        tg.cancel_scope.cancel()
    return (True, outcome[0]) if outcome else (False, None)
