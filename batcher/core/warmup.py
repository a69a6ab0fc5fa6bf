"""Write first: the decisions that keep concurrent rows from all paying for the same cache write.

Every request of a cached job carries the same breakpoint (:mod:`batcher.core.cache`). Sent at
once, the first ``concurrency`` requests would all miss the cache and each pay the write (1.25x or
2x the input price for the whole prefix). So the first request that carries the breakpoint goes
alone (it *writes*); the others wait until it has answered (the entry exists from then on) and then
go together (they *read*). If the writer fails (an error, retries used up, the run stopping), the
next request goes alone in its place.

An entry lives for its TTL after the last request that used it. When nothing has used the prefix
for longer than that (less :data:`EXPIRY_MARGIN_S`: a long pause after 429s, a slow manifest), the
cache may be cold again, and the next request goes alone again.

Pure: times come from the caller; the online driver (:mod:`batcher.pipeline`) does the waiting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from batcher import facts
from batcher.core.cache import CachePoint

#: Seconds before an entry's TTL runs out after which it is taken as possibly gone: a request's
#: trip to the API and the time the API takes to look it up (a read refreshes the entry when the
#: API processes it, not when batcher sends it).
EXPIRY_MARGIN_S = 15.0

#: What :meth:`WarmupGate.admit` says to a request that carries the breakpoint: ``"read"``: the
#: prefix is cached, go; ``"write"``: go alone, this request writes it; ``"wait"``: another
#: request is writing it.
Admission = Literal["read", "write", "wait"]
GateState = Literal["cold", "writing", "warm"]


@dataclass
class WarmupGate:
    """The write-first state machine for one job's breakpoint (see the module doc)."""

    ttl_s: float
    state: GateState = "cold"
    #: when a request last used the prefix (sent, and answered): the entry lives ``ttl_s`` after
    last_used: float = -math.inf
    #: requests that went alone to write the prefix, and those that went while it was warm
    writes: int = 0
    reads: int = 0

    @classmethod
    def for_point(cls, point: CachePoint) -> WarmupGate:
        return cls(float(facts.CACHE_TTL_S[point.ttl]))

    def expired(self, now: float) -> bool:
        """Nothing has used the prefix for longer than its TTL (less the margin)."""
        return now - self.last_used > max(0.0, self.ttl_s - EXPIRY_MARGIN_S)

    def admit(self, now: float) -> Admission:
        """What a request that carries the breakpoint does now. ``"write"`` makes it the writer:
        the gate stays closed until :meth:`answered` or :meth:`failed` is called for it."""
        if self.state == "warm" and self.expired(now):
            self.state = "cold"
        if self.state == "warm":
            self.reads += 1
            return "read"
        if self.state == "writing":
            return "wait"
        self.state = "writing"
        self.writes += 1
        return "write"

    def answered(self, sent_at: float) -> None:
        """A request that carried the breakpoint was answered (it read or wrote the prefix): the
        entry exists and lives from ``sent_at`` on; the gate is open."""
        self.last_used = max(self.last_used, sent_at)
        self.state = "warm"

    def failed(self, writer: bool) -> None:
        """A request got no answer. If it was the writer, the next request goes alone instead."""
        if writer and self.state == "writing":
            self.state = "cold"

    @property
    def is_open(self) -> bool:
        return self.state == "warm"
