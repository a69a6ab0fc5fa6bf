"""The simulator's prompt cache, following the API's rules.

- **Breakpoints only.** An entry is written only where a ``cache_control`` breakpoint ends a
  prefix (an explicit one on a block, or the top-level one, which marks the last cacheable
  block); the entry is the whole prompt up to and including that block, in cache order (tools,
  the structured-output format, system, messages), for that model. A request without a
  breakpoint neither reads nor writes.
- **The 20-block lookback.** Each breakpoint looks for a cached prefix ending at its own block
  and at each of the :data:`LOOKBACK_BLOCKS` blocks before it (:attr:`Segment.block
  <batcher.simulator.validate.Segment.block>` says what a block is); the longest hit over every
  breakpoint is read. A request whose breakpoint sits a few blocks after the one an earlier
  request wrote at still hits; one more than 20 blocks after does not.
- **Minimum length.** A breakpoint whose prefix is shorter than the model's
  ``min_cacheable_tokens`` (:data:`SIM_DEFAULT_MIN_CACHEABLE` where the model's is unknown)
  writes nothing, silently.
- **Writes are priced by breakpoint.** The tokens past what was read, up to each breakpoint, are
  written at that breakpoint's TTL (``cache_creation.ephemeral_5m_input_tokens`` and
  ``ephemeral_1h_input_tokens`` apart).
- **TTLs.** "5m" (``ttl`` absent) or "1h" from the write; a read refreshes the entry for its TTL
  (a breakpoint rewriting a live entry keeps the longer of the two); an expired entry is a miss.
  The clock is injectable (the live simulator's is skewed by ``SimConfig.cache_clock_skew_s``).
- **Namespaces.** Online ``/v1/messages`` requests and Message Batches requests keep apart
  entries (:data:`ONLINE`, :data:`BATCH`): a warm-up through the online API does not carry into
  batches (as reported of the API), while an entry written by an earlier batch, or by an earlier
  request of the same batch, is seen by later batch requests. Batches hit only on a best-effort
  basis: :func:`batch_hit` draws, per ``custom_id``, whether a lookup that would hit does.

Cache reads do not count toward the input-tokens-per-minute limit (writes do), as on current
models: :meth:`PromptCache.peek` tells the live endpoint what a prompt would read before it is
admitted, without changing anything.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from batcher import facts
from batcher.simulator.validate import Checked

#: Blocks before a breakpoint at which its lookup also looks for a cached prefix.
LOOKBACK_BLOCKS: Final = 20
#: The minimum cacheable prompt where a model's own is unknown (``min_cacheable_tokens`` unset).
SIM_DEFAULT_MIN_CACHEABLE: Final = 1024
#: Entries kept before expired ones are swept out.
_SWEEP_AT: Final = 4096
#: The cache namespaces: online Messages requests, and Message Batches requests.
ONLINE: Final = "online"
BATCH: Final = "batch"


@dataclass(frozen=True, slots=True)
class CacheUse:
    """What one request did with the cache: tokens read, written for 5 minutes and for 1 hour,
    and how many breakpoints it carried (a request with one that read nothing is a miss)."""

    read: int = 0
    write_5m: int = 0
    write_1h: int = 0
    breakpoints: int = 0

    @property
    def written(self) -> int:
        return self.write_5m + self.write_1h

    @property
    def hit(self) -> bool:
        return self.breakpoints > 0 and self.read > 0


NO_USE: Final = CacheUse()


@dataclass(frozen=True, slots=True)
class Boundary:
    """The prompt up to the end of one block: its key, its tokens, and the breakpoint's TTL if
    the block carries one."""

    key: bytes
    tokens: int
    ttl: str | None


def boundaries(checked: Checked) -> list[Boundary]:
    """Every block end of the prompt, in cache order (incremental blake2b over the pieces)."""
    digest = hashlib.blake2b(checked.profile.id.encode(), digest_size=16)
    out = []
    cum = 0
    for seg in checked.segments:
        digest.update(seg.key.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1f")
        cum += seg.tokens
        if seg.block:
            out.append(Boundary(digest.copy().digest(), cum, seg.ttl))
    return out


def min_cacheable(checked: Checked) -> int:
    """The model's minimum cacheable prompt, or the simulator's default where it is unknown."""
    return checked.profile.min_cacheable_tokens or SIM_DEFAULT_MIN_CACHEABLE


def batch_hit(seed: int, custom_id: str, share: float) -> bool:
    """Whether a batch request's lookup that would hit does (best effort): a draw seeded by the
    batch clock's seed and the request's ``custom_id``, true with probability ``share``."""
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    return random.Random(f"{seed}/cache/{custom_id}").random() < share


def _longer(a: str, b: str) -> str:
    return a if facts.CACHE_TTL_S[a] >= facts.CACHE_TTL_S[b] else b


class PromptCache:
    """Cached prompt prefixes: (namespace, key) -> (monotonic expiry time, TTL). Thread-safe (the
    batch ticker and the live endpoint's worker threads use it at once)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.entries: dict[tuple[str, bytes], tuple[float, str]] = {}
        self._lock = threading.Lock()

    def peek(self, checked: Checked, namespace: str = ONLINE) -> int:
        """Tokens of this prompt that :meth:`use` would read from the cache now; changes nothing
        (a request refused by the rate limits neither writes nor refreshes an entry)."""
        points = boundaries(checked)
        with self._lock:
            found = self._lookup(points, namespace, self.clock())
        return found[1] if found is not None else 0

    def use(self, checked: Checked, namespace: str = ONLINE, *, hit: bool = True) -> CacheUse:
        """Read and write this prompt's prefixes; ``hit`` False: a lookup that would hit misses
        (a best-effort miss in a batch), so the prefix is written again."""
        points = boundaries(checked)
        marks = [i for i, point in enumerate(points) if point.ttl is not None]
        if not marks:
            return NO_USE
        minimum = min_cacheable(checked)
        with self._lock:
            now = self.clock()
            if len(self.entries) >= _SWEEP_AT:
                self.entries = {k: v for k, v in self.entries.items() if v[0] > now}
            found = self._lookup(points, namespace, now) if hit else None
            read = 0
            if found is not None:
                index, read = found
                key = (namespace, points[index].key)
                _, ttl = self.entries[key]
                self.entries[key] = (now + facts.CACHE_TTL_S[ttl], ttl)  # a read refreshes it
            written = {"5m": 0, "1h": 0}
            done = read
            for i in marks:
                point = points[i]
                assert point.ttl is not None
                if point.tokens < minimum:
                    continue  # too short to cache: nothing written, silently
                if point.tokens > done:
                    written[point.ttl] += point.tokens - done
                    done = point.tokens
                key = (namespace, point.key)
                old = self.entries.get(key)
                ttl = point.ttl if old is None or old[0] <= now else _longer(old[1], point.ttl)
                self.entries[key] = (now + facts.CACHE_TTL_S[ttl], ttl)
        return CacheUse(read, written["5m"], written["1h"], len(marks))

    def _lookup(self, points: list[Boundary], namespace: str, now: float) -> tuple[int, int] | None:
        """(boundary index, tokens) of the longest live prefix any breakpoint's lookback finds."""
        best: tuple[int, int] | None = None
        for i, point in enumerate(points):
            if point.ttl is None:
                continue
            for j in range(i, max(-1, i - LOOKBACK_BLOCKS - 1), -1):
                entry = self.entries.get((namespace, points[j].key))
                if entry is not None and entry[0] > now:
                    if best is None or points[j].tokens > best[1]:
                        best = (j, points[j].tokens)
                    break
        return best
