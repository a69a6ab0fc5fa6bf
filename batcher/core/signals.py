"""Stopping a run, whichever driver runs it: SIGINT/SIGTERM (the first stops, the second abandons)
and the grace a fatal answer leaves the requests already sent."""

from __future__ import annotations

import signal
import threading
from typing import Protocol

import anyio

#: Seconds requests in flight get to come back after a fatal answer before they are dropped.
FATAL_GRACE_S = 10.0


class FatalRunError(Exception):
    """Nothing else this run sends can succeed (401, 402, spend limit): stop, keep what is done."""


def fatal_grace(scope: anyio.CancelScope | None) -> None:
    """After a fatal answer: the requests already sent get :data:`FATAL_GRACE_S` to come back (an
    answer the API billed but nobody recorded would be paid again by the next run), then ``scope``
    (the driver's work) is cancelled."""
    if scope is not None:
        scope.deadline = min(scope.deadline, anyio.current_time() + FATAL_GRACE_S)


class Stoppable(Protocol):
    """A run that can be told to stop (send nothing more) and to abandon (drop what is in flight)."""

    @property
    def stopping(self) -> anyio.Event: ...

    def stop(self, reason: str) -> None: ...

    def abandon(self, reason: str) -> None: ...


async def watch_signals(run: Stoppable) -> None:
    """First SIGINT/SIGTERM: send nothing more (the online driver's ``stop`` also cancels the
    downloads and image preparations in flight, killing their workers) and let requests already
    sent finish. Second: abandon those too.

    Only the main thread can receive signals: a run on another one (``batcher.run`` called where an
    event loop already runs, as in a notebook) watches none, and its caller's interrupt stands."""
    if threading.current_thread() is not threading.main_thread():
        return
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if run.stopping.is_set():
                run.abandon(f"{name} again")
                return
            run.stop(name)
