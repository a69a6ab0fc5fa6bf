"""A pool of worker processes that prepares images off the event loop, each within a time and memory bound.

Decoding is CPU-bound and in C, and a hostile file can make a decoder loop, allocate without end, or
crash: none of that may reach the event loop or the run. Each worker is a separate process (spawned,
so it inherits no threads or sockets from the caller) that runs
:func:`batcher.images.prepare.prepare_file` one image at a time (or, for ``batcher report``,
:func:`batcher.images.thumbnail.make_thumbnail`: :meth:`ImagePool.thumbnail`, within the same bounds):

* **time**: the parent waits ``options.timeout_s`` for the answer; past it the worker is killed and
  replaced, and the image fails with ``timeout``;
* **memory**: the worker sets ``RLIMIT_AS`` to ``options.memory_limit_bytes`` around each image, so a
  runaway allocation raises ``MemoryError`` there (``out_of_memory``) instead of growing the machine;
* **crashes**: a worker that dies mid-image (a decoder segfault, the kernel's OOM killer) is replaced,
  and the image fails with ``decode_error`` (``out_of_memory`` when it was SIGKILLed).

Results cross processes as plain data: bytes and small fields. Usage::

    async with ImagePool(workers=2) as pool:
        prepared = await pool.prepare(path, profile, options, images_in_request=1)

Workers are spawned, so a script that uses the pool needs the usual ``if __name__ == "__main__":``
guard (the ``batcher`` command and pytest have it). Many concurrent ``prepare`` calls are fine: each
waits for a free worker. A cancelled ``prepare`` returns at once: its worker is killed, never
awaited (it may be blocked in a read or deep in a decoder), and the next ``prepare`` that finds no
idle worker starts a new one, as after a timeout or a crash.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread

from batcher.errors import JobError
from batcher.images.errors import ImageConfigError, ImageError, ImageTimeout, OutOfMemory, error_from_type
from batcher.images.prepare import PreparedImage, prepare_file
from batcher.images.sizing import ImageOptions, check_options
from batcher.images.thumbnail import Thumbnail, make_thumbnail
from batcher.models import ModelProfile

#: Seconds a new worker may take to start and import Pillow before the pool gives up on it.
START_TIMEOUT_S = 60.0
#: Seconds a worker gets to exit after being asked to, before it is killed.
STOP_TIMEOUT_S = 2.0


class PoolError(JobError, RuntimeError):
    """The pool itself cannot run (workers fail to start, or it is used outside ``async with``)."""


@dataclass(frozen=True, slots=True)
class _Task:
    source: str | bytes
    profile: ModelProfile
    options: ImageOptions
    images_in_request: int


@dataclass(frozen=True, slots=True)
class _ThumbTask:
    """A report's thumbnail (:func:`batcher.images.thumbnail.make_thumbnail`), within the same bounds."""

    source: str | bytes
    thumb_px: int
    options: ImageOptions


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _set_memory_limit(limit: int | None) -> None:
    try:
        import resource
    except ImportError:  # no RLIMIT_AS here (not POSIX): the time bound still holds
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = resource.RLIM_INFINITY if limit is None else limit
    if hard != resource.RLIM_INFINITY:
        soft = hard if soft == resource.RLIM_INFINITY else min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _label(source: str | bytes) -> str:
    return "<bytes>" if isinstance(source, bytes) else source


def _run_task(task: _Task) -> tuple[Any, ...]:
    """Prepare one image in the worker; every outcome becomes a plain tuple for the pipe."""

    def prepare() -> tuple[Any, ...]:
        try:
            prepared = prepare_file(task.source, task.profile, task.options, task.images_in_request)
        except ImageConfigError as exc:
            return ("config", str(exc))
        return ("ok", prepared.to_dict())

    return _bounded(task.source, task.options.memory_limit_bytes, prepare)


def _run_thumb(task: _ThumbTask) -> tuple[Any, ...]:
    """Make one thumbnail in the worker; every outcome a plain tuple, as :func:`_run_task`."""

    def thumbnail() -> tuple[Any, ...]:
        thumb = make_thumbnail(task.source, task.thumb_px, task.options)
        return ("thumb", thumb.data, thumb.width, thumb.height)

    return _bounded(task.source, task.options.memory_limit_bytes, thumbnail)


def _bounded(
    source: str | bytes, memory_limit_bytes: int | None, work: Callable[[], tuple[Any, ...]]
) -> tuple[Any, ...]:
    """``work()`` under the worker's memory bound; an image's failure becomes its error tuple."""
    _set_memory_limit(memory_limit_bytes)
    try:
        return work()
    except ImageError as exc:
        return ("error", exc.error_type, str(exc))
    except MemoryError:
        return (
            "error",
            "out_of_memory",
            f"{_label(source)}: needed more than the {memory_limit_bytes:,}-byte memory bound",
        )
    except Exception as exc:  # a bug or an unclassified decoder failure: still only this image's
        return ("error", "decode_error", f"{_label(source)}: {type(exc).__name__}: {exc}")
    finally:
        _set_memory_limit(None)  # the answer itself must be sendable


def _silence_stderr() -> None:
    """Decoders' C libraries (libtiff above all) print to fd 2 about every odd file: their findings
    reach the results as error types, so the noise is dropped unless BATCHER_WORKER_STDERR is set."""
    if os.environ.get("BATCHER_WORKER_STDERR"):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


#: What a worker does with each task: ``_run_task`` (tests give the pool a slower one).
WorkFunction = Callable[[_Task], tuple[Any, ...]]


def _worker_main(conn: multiprocessing.connection.Connection, work: WorkFunction = _run_task) -> None:
    """A worker's life: say ready, then answer tasks until told to stop or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    from batcher.images.decode import register_plugins

    register_plugins()
    _silence_stderr()
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(_run_thumb(task) if isinstance(task, _ThumbTask) else work(task))


class _Worker:
    """One worker process and its pipe. Used from one thread at a time."""

    def __init__(self, context: multiprocessing.context.SpawnContext, work: WorkFunction = _run_task) -> None:
        #: set (from the event loop) when the task it runs is cancelled: it is killed, not awaited
        self.abandoned = False
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child, work), daemon=True, name="batcher-image-worker"
        )
        self.process.start()
        child.close()
        if not self.conn.poll(START_TIMEOUT_S):
            self.kill()
            raise PoolError(f"an image worker did not start within {START_TIMEOUT_S:.0f} s")
        try:
            self.conn.recv()
        except EOFError:
            self.kill()
            raise PoolError(f"an image worker exited while starting (code {self.process.exitcode})") from None

    def run(self, task: _Task | _ThumbTask, timeout_s: float) -> tuple[Any, ...] | None:
        """The worker's answer, or None if it timed out or died (it is then dead)."""
        try:
            self.conn.send(task)
            if self.conn.poll(timeout_s):
                answer: tuple[Any, ...] = self.conn.recv()  # what WorkFunction returned
                return answer
        except (EOFError, OSError):
            pass
        self.kill()
        return None

    def abandon(self) -> None:
        """Kill the worker now, from the event loop, without waiting: the thread that waits for its
        answer sees the pipe close, reaps it and returns (see ``ImagePool.prepare``)."""
        self.abandoned = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.process.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(STOP_TIMEOUT_S)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(STOP_TIMEOUT_S)
        self.kill()


class ImagePool:
    """Prepare images in ``workers`` processes (default: one per core); see the module docstring.

    ``work`` is what a worker runs per task (a module-level function, as workers are spawned):
    :func:`_run_task`, i.e. :func:`~batcher.images.prepare.prepare_file`, unless a test needs a
    worker that hangs."""

    def __init__(self, workers: int | None = None, *, work: WorkFunction = _run_task) -> None:
        self.workers = workers or default_workers()
        self._context = multiprocessing.get_context("spawn")
        self._work = work
        self._idle: list[_Worker] = []
        #: workers killed (timeout, crash, cancelled) and not yet replaced: the next prepare starts one
        self._missing = 0
        self._slots = anyio.Semaphore(self.workers)
        self._threads = anyio.CapacityLimiter(self.workers)
        self._open = False
        #: How many workers were replaced after a timeout or a crash (for the run's summary).
        self.replaced = 0

    async def __aenter__(self) -> ImagePool:
        async with anyio.create_task_group() as group:
            for _ in range(self.workers):
                group.start_soon(self._start_one)
        self._open = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False
        idle, self._idle = self._idle, []
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as group:
                for worker in idle:
                    group.start_soon(anyio.to_thread.run_sync, worker.stop)

    async def _start_one(self) -> None:
        worker = await anyio.to_thread.run_sync(_Worker, self._context, self._work, limiter=self._threads)
        self._idle.append(worker)

    async def prepare(
        self,
        source: Path | str | bytes,
        profile: ModelProfile,
        options: ImageOptions | None = None,
        images_in_request: int = 1,
    ) -> PreparedImage:
        """Prepare one image in a worker; raises its ``ImageError`` (timeout, out_of_memory...)."""
        if not self._open:
            raise PoolError("ImagePool.prepare called outside `async with ImagePool(...)`")
        options = options or ImageOptions()
        check_options(profile, options)
        src = source if isinstance(source, bytes) else str(source)
        return _result(await self._submit(_Task(src, profile, options, images_in_request)))

    async def thumbnail(
        self, source: Path | str | bytes, thumb_px: int, options: ImageOptions | None = None
    ) -> Thumbnail:
        """A report's thumbnail of one image (:func:`~batcher.images.thumbnail.make_thumbnail`) in a
        worker, within the same time and memory bounds; raises its ``ImageError``."""
        if not self._open:
            raise PoolError("ImagePool.thumbnail called outside `async with ImagePool(...)`")
        src = source if isinstance(source, bytes) else str(source)
        reply = await self._submit(_ThumbTask(src, thumb_px, options or ImageOptions()))
        if reply[0] == "thumb":
            return Thumbnail(reply[1], reply[2], reply[3])
        raise error_from_type(reply[1], reply[2])

    async def _submit(self, task: _Task | _ThumbTask) -> tuple[Any, ...]:
        """Run one task in a free worker; its reply (a dead worker's says why)."""
        async with self._slots:
            worker = await self._take()
            try:
                # Cancellable: a stopped run (a signal) does not wait for an image nothing will send.
                alive, reply = await anyio.to_thread.run_sync(
                    self._run, worker, task, limiter=self._threads, abandon_on_cancel=True
                )
            except BaseException:
                worker.abandon()
                self._missing += 1
                raise
            if alive:
                self._idle.append(worker)
            else:
                self._missing += 1
        return reply

    async def _take(self) -> _Worker:
        """An idle worker, or a new one in place of one that was killed."""
        if self._idle:
            return self._idle.pop()
        if not self._missing:
            raise PoolError("no image workers left")
        self._missing -= 1
        try:
            # Not abandoned on cancel: a worker being started is waited for (it takes about a second)
            # so that no process is left behind; the cancellation then kills it in ``prepare``.
            return await anyio.to_thread.run_sync(_Worker, self._context, self._work, limiter=self._threads)
        except BaseException:
            self._missing += 1
            raise

    def _run(self, worker: _Worker, task: _Task | _ThumbTask) -> tuple[bool, tuple[Any, ...]]:
        """In a thread: run the task; ``(alive, reply)``. A worker that timed out or crashed is dead
        (replaced by the next ``_take``), and the reply says why."""
        started = time.monotonic()
        reply = worker.run(task, task.options.timeout_s)
        if reply is not None:
            return True, reply
        elapsed = time.monotonic() - started
        if not worker.abandoned:
            self.replaced += 1
        return False, _failure(task, elapsed, worker.process.exitcode)


def _failure(task: _Task | _ThumbTask, elapsed: float, exitcode: int | None) -> tuple[Any, ...]:
    label = _label(task.source)
    if exitcode == -signal.SIGKILL and elapsed >= task.options.timeout_s:
        return (
            "error",
            ImageTimeout.error_type,
            f"{label}: not prepared within {task.options.timeout_s:g} s; its worker was killed",
        )
    if exitcode == -signal.SIGKILL:
        return ("error", OutOfMemory.error_type, f"{label}: its worker was killed (out of memory)")
    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    return ("error", "decode_error", f"{label}: the decoder crashed its worker ({how})")


def _result(reply: tuple[Any, ...]) -> PreparedImage:
    kind = reply[0]
    if kind == "ok":
        return PreparedImage.from_dict(reply[1])
    if kind == "config":
        raise ImageConfigError(reply[1])
    raise error_from_type(reply[1], reply[2])
