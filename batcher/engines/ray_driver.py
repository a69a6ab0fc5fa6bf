"""The Ray engine's driver: the online run, with its rows sent by a Ray cluster's workers.

The driver keeps all that makes a run exactly-once, as the online driver does: the runner has read
the manifest, holds the lock and the job state, decided which rows need work and opened the sink
before :meth:`RayPipeline.run` is called. The driver hands each row to a worker actor
(:class:`~batcher.engines.ray_worker.RowWorker`: prepare, then request, through the run core) and
records each :class:`~batcher.engines.ray_worker.Reply` the moment it comes back, through the core's
:class:`~batcher.core.writer.Writer`. Workers never write the state.

One rate budget for the whole cluster: every worker's requests pass the job's one limiter, a named
actor (:mod:`batcher.engines.ray_limiter`) that also holds ``[limits] budget_usd``.

A worker that dies loses only its rows in flight: each is handed to another worker (a new one
replaces the dead), so those rows, and only those, may be paid twice; a row whose worker dies a
second time is left for the next run (``worker_lost``). ``stop`` (Ctrl-C, the budget, a fatal
answer) stops every worker's sends as a local run's are stopped; ``abandon`` drops what is in
flight.

``ray`` is imported only when a run starts: ``batcher --help`` never loads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from batcher.budget import Budget, BudgetGate
from batcher.config import JobConfig
from batcher.core.failures import failure_outcome
from batcher.core.outcomes import Counters, Outcome, Recorded, Transient, Written
from batcher.core.plan import NO_PREFIX, SharedPrefix
from batcher.core.prepare import as_async
from batcher.core.request import hold_limit
from batcher.core.seams import ResultSink, RunState
from batcher.core.signals import FatalRunError, fatal_grace
from batcher.core.structured import StructuredOutput
from batcher.core.writer import Writer
from batcher.engines import INSTALL, RayEngineError
from batcher.engines.ray_limiter import ACTOR_CONCURRENCY, NAMESPACE, LimiterPicture
from batcher.engines.ray_worker import Reply, RowWorker, WorkerSetup
from batcher.errors import WORKER_ERROR, WORKER_LOST
from batcher.models import ModelProfile
from batcher.ratelimit import SNAPSHOT_EVERY_S, job_seed
from batcher.records import Result, Row
from batcher.retry import RetryPolicy

#: seconds ``ray.init`` has to start or join a cluster (at an address nothing answers, it keeps trying)
CONNECT_TIMEOUT_S: Final = 60.0
#: seconds the workers have to start (a cluster without room for them never places them)
START_TIMEOUT_S: Final = 120.0
#: how often the driver reads the cluster limiter's picture (progress, read-ahead, status)
VIEW_EVERY_S: Final = 1.0
#: times a row's worker may die before the row is left for the next run
MAX_WORKER_DEATHS: Final = 2


def import_ray() -> Any:
    """``ray``, or one line naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise RayEngineError(f'run.engine "ray" needs Ray: {INSTALL}') from None
    return ray


def local_cpus(workers: int, worker_cpus: float, cores: int | None) -> int:
    """CPUs a local Ray instance declares: the machine's, or enough to place every worker (the
    workers mostly wait on the API, so a small machine may run more of them than it has cores)."""
    return max(cores or 1, math.ceil(workers * worker_cpus))


def placement_problem(total_cpus: float, workers: int, worker_cpus: float) -> str | None:
    """Why a local Ray instance of ``total_cpus`` cannot hold ``workers`` workers (None: it can)."""
    need = workers * worker_cpus
    if need <= total_cpus:
        return None
    return (
        f"the local Ray instance has {total_cpus:g} CPUs; {workers} workers of ray.worker_cpus = "
        f"{worker_cpus:g} need {need:g}: lower ray.workers or ray.worker_cpus (a Ray this process "
        "already started keeps its CPUs)"
    )


def job_key(out_dir: str) -> str:
    """A name unique to this run of this output folder (the actors' names in the cluster)."""
    digest = hashlib.sha256(out_dir.encode()).hexdigest()[:10]
    return f"{digest}-{uuid.uuid4().hex[:8]}"


def init_in_keeper(ray: Any, timeout_s: float = CONNECT_TIMEOUT_S, **options: Any) -> None:
    """``ray.init(**options)`` on a thread that lives as long as the process. A local instance's
    node processes are started with ``PR_SET_PDEATHSIG``, which kills them when the *thread* that
    started them ends: started from a worker thread that goes idle, the cluster would die mid-run.
    Blocks until the init is done (call it off the event loop); its error is raised here, and
    :class:`TimeoutError` after ``timeout_s`` (an address no cluster answers at: Ray keeps trying)."""
    done = threading.Event()
    failed: list[BaseException] = []

    def keep() -> None:
        try:
            ray.init(**options)
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)
            return
        finally:
            done.set()
        threading.Event().wait()  # never set: the thread, and the node processes, end with the process

    threading.Thread(target=keep, name="batcher-ray-keeper", daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"no answer within {timeout_s:.0f} s")
    if failed:
        raise failed[0]


class ClusterLimits(LimiterPicture):
    """The cluster limiter's latest picture, on the driver (the progress line and ``status``)."""


@dataclass
class _Worker:
    name: str
    handle: Any
    busy: int = 0
    dead: bool = False


@dataclass
class RayPipeline:
    """The Ray engine's driver (see the module doc): the surface of :class:`~batcher.pipeline.Pipeline`
    the runner uses (``run``, ``stop``, ``abandon``, ``counters``, ``limiter``, ``budget``)."""

    job: JobConfig
    profile: ModelProfile
    state: RunState
    sink: ResultSink
    api_key: str = field(repr=False)
    base_url: str
    out_dir: str
    counters: Counters = field(default_factory=Counters)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    #: ``[limits] budget_usd``: the runner's gate; its budget is held by the cluster's limiter
    #: during the run and copied back at its end
    budget: BudgetGate | None = None
    output: StructuredOutput | None = None
    prefix: SharedPrefix = NO_PREFIX
    on_result: Callable[[Result], None] | None = None
    #: the Files transport is refused with this engine (its file ids live in the driver's state)
    uploader: None = None
    #: say a line (where the workers run)
    say: Callable[[str], None] | None = None

    limiter: ClusterLimits = field(default_factory=ClusterLimits)
    #: the workers taking rows (started); every actor ever made, for the teardown
    _workers: list[_Worker] = field(default_factory=list)
    _actors: list[Any] = field(default_factory=list)
    _service: Any = None
    _key: str = ""
    _numbered: int = 0
    _in_flight: int = 0
    _room: anyio.Event | None = None
    _fatal: list[str] = field(default_factory=list)
    _cancel_work: anyio.CancelScope | None = None
    _replacing: anyio.Lock | None = None

    def __post_init__(self) -> None:
        self.stopping = anyio.Event()

    # --- the whole run ----------------------------------------------------------------------

    async def run(self, rows: Iterable[Row] | AsyncIterable[Row]) -> Counters:
        ray = import_ray()
        await anyio.to_thread.run_sync(self._connect, ray)
        try:
            return await self._run(ray, rows)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._teardown, ray)

    async def _run(self, ray: Any, rows: Iterable[Row] | AsyncIterable[Row]) -> Counters:
        self._key = job_key(self.out_dir)
        self._service = self._start_service(ray)
        self._replacing = anyio.Lock()
        self._room = anyio.Event()
        await self._start_workers(ray, self.job.ray.workers)
        if self.say is not None:
            where = self.job.ray.address or "a local Ray instance"
            self.say(f"batcher: {len(self._workers)} Ray workers on {where}, one rate budget")
        writer = Writer(
            self.state, self.sink, self.counters, self.job.run.part_rows, on_result=self.on_result
        )
        results_send, results = anyio.create_memory_object_stream[Written](self.job.run.concurrency * 2)
        async with anyio.create_task_group() as outer:
            outer.start_soon(writer.write, results)
            try:
                async with anyio.create_task_group() as tg:
                    self._cancel_work = tg.cancel_scope
                    viewing = anyio.Event()
                    tg.start_soon(self._watch_view, viewing)
                    async with results_send:
                        await self._dispatch(rows, tg, results_send, writer)
                        await self._drained()
                    viewing.set()
            finally:
                results_send.close()
        await self._settle_budget()
        await anyio.to_thread.run_sync(self.state.set_meta, "rate_limits", self.limiter.snapshot())
        if self._fatal:
            raise FatalRunError(self._fatal[0])
        return self.counters

    def stop(self, reason: str) -> None:
        """Take no new rows; every worker stops sending; requests in flight finish."""
        if self.counters.stop_reason is None:
            self.counters.stop_reason = reason
        if self.stopping.is_set():
            return
        self.stopping.set()
        for worker in self._workers:
            if not worker.dead:
                worker.handle.stop.remote(reason)
        self._wake()

    def fatal_stop(self, message: str) -> None:
        """Nothing more can succeed (401, 402, spend limit): as the online driver's, requests
        already sent get a short grace to come back."""
        self._fatal.append(message)
        self.stop(f"fatal: {message}")
        fatal_grace(self._cancel_work)

    def abandon(self, reason: str) -> None:
        """Stop now: requests in flight are dropped (the next run sends them again)."""
        self.stop(reason)
        if self._cancel_work is not None:
            self._cancel_work.cancel()

    # --- Ray ----------------------------------------------------------------------------------

    def _connect(self, ray: Any) -> None:
        """Join the job's cluster, or start a local instance. Either stays connected for the rest
        of the process (Ray's exit handler disconnects it): a second ``ray.init`` in a process after
        ``ray.shutdown`` can lose its new cluster, so a notebook's next run reuses this one."""
        if ray.is_initialized():
            return
        address = self.job.ray.address
        # Ray's own start-up notices would break into the run's lines: errors only.
        options: dict[str, Any] = {
            "namespace": NAMESPACE,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        if address is None:
            cfg = self.job.ray
            options |= {
                "num_cpus": local_cpus(cfg.workers, cfg.worker_cpus, os.cpu_count()),
                "include_dashboard": False,
            }
        try:
            init_in_keeper(ray, address=address, **options)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            where = f"ray.address {address!r}" if address else "a local Ray instance"
            raise RayEngineError(f"{where}: cannot start or join Ray: {exc}") from None

    def _start_service(self, ray: Any) -> Any:
        from batcher.engines.ray_limiter import start_limiter

        seed, source = job_seed(self.job)
        # The actor gets a copy (the call pickles it); _settle_budget brings its figures back.
        budget = self.budget.budget if self.budget is not None else None
        return start_limiter(self._key, seed, self.job.run.concurrency, source, budget=budget)

    def _setup(self) -> WorkerSetup:
        cfg = self.job.ray
        return WorkerSetup(
            job=self.job,
            profile=self.profile,
            api_key=self.api_key,
            base_url=self.base_url,
            policy=self.policy,
            output=self.output,
            prefix=self.prefix,
            image_workers=max(1, int(cfg.worker_cpus)),
            budgeted=self.budget is not None,
        )

    def _new_worker(self, ray: Any, setup: WorkerSetup) -> _Worker:
        self._numbered += 1
        name = f"batcher-worker-{self._key}-{self._numbered}"
        actor = ray.remote(RowWorker).options(
            name=name,
            namespace=NAMESPACE,
            max_concurrency=ACTOR_CONCURRENCY,
            num_cpus=self.job.ray.worker_cpus,
            max_restarts=0,
        )
        handle = actor.remote(setup, self._service, name)
        self._actors.append(handle)
        return _Worker(name, handle)

    async def _start_workers(self, ray: Any, count: int) -> list[_Worker]:
        if self.job.ray.address is None:
            # A local instance grows no nodes: workers it cannot place would be waited for in vain.
            total = float((await anyio.to_thread.run_sync(ray.cluster_resources)).get("CPU", 0.0))
            busy = sum(1 for w in self._workers if not w.dead)
            problem = placement_problem(total, busy + count, self.job.ray.worker_cpus)
            if problem is not None:
                raise RayEngineError(problem)
        setup = self._setup()
        fresh = [self._new_worker(ray, setup) for _ in range(count)]
        with anyio.move_on_after(START_TIMEOUT_S) as waited:
            for worker in fresh:
                await worker.handle.start.remote()
        # Rows go only to started workers (a worker's first rows would otherwise wait on its start).
        self._workers.extend(fresh)
        if waited.cancelled_caught:
            raise RayEngineError(
                f"the cluster placed fewer than {count} Ray workers in {START_TIMEOUT_S:.0f} s (each "
                f"asks ray.worker_cpus = {self.job.ray.worker_cpus:g} CPU): lower ray.workers or "
                "ray.worker_cpus, or add nodes"
            )
        return fresh

    def _teardown(self, ray: Any) -> None:
        """Workers and the limiter go with the run (the Ray connection stays: see :meth:`_connect`)."""
        for worker in self._workers:
            if not worker.dead:
                with contextlib.suppress(Exception):
                    ray.get(worker.handle.close.remote(), timeout=10)
        for handle in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(handle)
        if self._service is not None:
            with contextlib.suppress(Exception):
                ray.kill(self._service)

    # --- handing out rows -------------------------------------------------------------------------

    async def _dispatch(
        self,
        rows: Iterable[Row] | AsyncIterable[Row],
        tg: TaskGroup,
        results: MemoryObjectSendStream[Written],
        writer: Writer,
    ) -> None:
        async for row in as_async(rows):
            if self.stopping.is_set():
                return
            self.counters.total += 1
            if row.error is not None:
                await results.send(failure_outcome(row.error, row, None))
                continue
            await self._wait_for_room()
            if self.stopping.is_set():
                return
            self._in_flight += 1
            tg.start_soon(self._one, row, results.clone(), writer)

    def _window(self) -> int:
        """Rows out on the workers at once: what the cluster's limiter would have in flight and as
        many again queued (the online driver's read-ahead), at most ``concurrency``, and enough
        to keep every worker busy."""
        lim = self.limiter
        workers = len(self._workers)
        held = hold_limit(lim.in_flight_limit(), lim.latency_s is not None, 2 * workers)
        return max(workers, min(self.job.run.concurrency, held))

    async def _wait_for_room(self) -> None:
        while not self.stopping.is_set() and self._in_flight >= self._window():
            with anyio.move_on_after(VIEW_EVERY_S):  # the window grows as the limiter learns
                await self._room_changed().wait()

    async def _drained(self) -> None:
        while self._in_flight:
            await self._room_changed().wait()

    def _room_changed(self) -> anyio.Event:
        if self._room is None or self._room.is_set():
            self._room = anyio.Event()
        return self._room

    def _wake(self) -> None:
        if self._room is not None:
            self._room.set()

    async def _one(self, row: Row, results: MemoryObjectSendStream[Written], writer: Writer) -> None:
        """One row through a worker, to its durable outcome; another worker if its worker dies."""
        from ray.exceptions import RayActorError, RayTaskError

        async with results:
            try:
                reply: Reply | None = None
                outcome: Outcome | None = None
                deaths = 0
                while reply is None and outcome is None:
                    worker = await self._pick()
                    if worker is None:
                        return  # stopping, no worker left to take it: the next run sends it
                    worker.busy += 1
                    try:
                        reply = await worker.handle.process.remote(row)
                    except RayActorError:
                        deaths += 1
                        await self._lost(worker)
                        if deaths >= MAX_WORKER_DEATHS:
                            outcome = Transient(
                                row.id,
                                WORKER_LOST,
                                f"the Ray worker holding this row died {deaths} times",
                                deaths,
                            )
                    except RayTaskError as exc:
                        outcome = Transient(row.id, WORKER_ERROR, _last_line(exc), 0)
                    finally:
                        worker.busy -= 1
                if reply is not None:
                    self._take(reply)
                    outcome = reply.outcome
                if outcome is None:
                    return  # not sent (the run is stopping): the next run sends it
                reasks = reply.reasks if reply is not None else 0
                # Durable the moment it is back, before anything else: a kill -9 of the driver pays
                # twice only for requests truly in flight.
                with anyio.CancelScope(shield=True):
                    if reasks and isinstance(outcome, Result):
                        await anyio.to_thread.run_sync(
                            partial(writer.record_all, [outcome], {outcome.id: reasks})
                        )
                    else:
                        await anyio.to_thread.run_sync(writer.record_all, [outcome])
                await results.send(Recorded(outcome))
            finally:
                self._in_flight -= 1
                self._wake()

    def _take(self, reply: Reply) -> None:
        """A reply's counts into the run's; a worker's stop (the budget, a fatal answer) stops all."""
        c, t = self.counters, reply.tally
        c.requests += t.requests
        c.retries += t.retries
        c.rate_limited += t.rate_limited
        c.reasks += t.reasks
        if reply.fatal is not None:
            if not self._fatal:
                self.fatal_stop(reply.fatal)
        elif reply.stop_reason is not None and not self.stopping.is_set():
            self.stop(reply.stop_reason)

    async def _pick(self) -> _Worker | None:
        """The live worker with the fewest rows; None when none is left and the run is stopping."""
        while True:
            alive = [w for w in self._workers if not w.dead]
            if alive:
                return min(alive, key=lambda w: w.busy)
            if self.stopping.is_set():
                return None
            assert self._replacing is not None
            async with self._replacing:  # a replacement is starting: wait for it
                pass

    async def _lost(self, worker: _Worker) -> None:
        """A worker died: its tickets go back to the limiter, and a new worker takes its place
        (unless the run is stopping)."""
        assert self._replacing is not None
        async with self._replacing:
            if worker.dead:
                return
            worker.dead = True
            with contextlib.suppress(Exception):
                await self._service.forget.remote(worker.name)
            if self.say is not None:
                self.say(f"batcher: Ray worker {worker.name} died; its rows in flight go to another")
            if not self.stopping.is_set():
                try:
                    await self._start_workers(import_ray(), 1)
                except RayEngineError as exc:
                    # No worker to send the rest: stop as a fatal answer would, keeping what is done.
                    self.fatal_stop(str(exc))

    async def _watch_view(self, done: anyio.Event) -> None:
        """The limiter's picture every second (progress line, read-ahead), into the state for
        ``batcher status`` as often as a local run writes it."""
        written = -float("inf")
        while not done.is_set():
            with contextlib.suppress(Exception):
                view = self.limiter.view = await self._service.view.remote()
                # Requests on the wire across the cluster, as the limiter counts them.
                self.counters.in_flight = int(view.snapshot.get("in_flight") or 0)
                self._wake()
                if time.monotonic() - written >= SNAPSHOT_EVERY_S:
                    written = time.monotonic()
                    # Off the event loop: a state write waits on the disk.
                    snapshot = self.limiter.snapshot()
                    await anyio.to_thread.run_sync(self.state.set_meta, "rate_limits", snapshot)
            with anyio.move_on_after(VIEW_EVERY_S):
                await done.wait()

    async def _settle_budget(self) -> None:
        """The cluster's budget back into the runner's gate (its summary line, ``status``)."""
        if self.budget is None or self._service is None:
            return
        with contextlib.suppress(Exception):
            final: Budget | None = await self._service.budget_now.remote()
            if final is not None:
                b = self.budget.budget
                b.spent_usd, b.reserved_usd, b.refused = final.spent_usd, final.reserved_usd, final.refused


def _last_line(exc: BaseException) -> str:
    """A worker's exception as one line (Ray wraps it with the remote traceback)."""
    cause = getattr(exc, "cause", None)
    text = str(cause if cause is not None else exc).strip().splitlines()
    return f"a Ray worker failed on this row: {text[-1] if text else type(exc).__name__}"
