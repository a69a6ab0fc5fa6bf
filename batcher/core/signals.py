"""SIGINT/SIGTERM for a run, whichever driver runs it: the first stops, the second abandons."""

from __future__ import annotations

import signal
from typing import Protocol

import anyio


class Stoppable(Protocol):
    """A run that can be told to stop (send nothing more) and to abandon (drop what is in flight)."""

    @property
    def stopping(self) -> anyio.Event: ...

    def stop(self, reason: str) -> None: ...

    def abandon(self, reason: str) -> None: ...


async def watch_signals(run: Stoppable) -> None:
    """First SIGINT/SIGTERM: send nothing more (the online driver's ``stop`` also cancels the
    downloads and image preparations in flight, killing their workers) and let requests already
    sent finish. Second: abandon those too."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if run.stopping.is_set():
                run.abandon(f"{name} again")
                return
            run.stop(name)
