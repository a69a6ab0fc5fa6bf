"""Client-side rate limiting: one shared gate every request passes before it is sent.

A 429 means the client's picture of the limit was wrong: the gate pauses *all* new sends until
the API's ``retry-after`` has passed, so one 429 does not become a hundred.
"""

from __future__ import annotations

import time

import anyio

#: How long to pause new sends after a 429 that did not say how long.
DEFAULT_PAUSE_S = 1.0


class RateGate:
    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock
        self._paused_until = 0.0

    def pause(self, seconds: float | None) -> None:
        """Hold new sends for ``seconds`` from now (extending, never shortening, a pause)."""
        until = self._clock() + (DEFAULT_PAUSE_S if seconds is None else seconds)  # type: ignore[operator]
        self._paused_until = max(self._paused_until, until)

    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())  # type: ignore[operator]

    async def wait(self) -> None:
        while (left := self.paused_for()) > 0:
            await anyio.sleep(left)
