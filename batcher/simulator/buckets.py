"""Rate limits: continuously refilled token buckets, as the API enforces them.

Three buckets for messages — requests, input tokens and output tokens per minute — and a fourth,
separate requests bucket for the Files API. A bucket refills at ``limit / 60`` a second and holds
at most ``burst_window_s`` seconds' worth of its limit (so 60 RPM with a 1 s window admits one
request a second, as the API punishes bursts); it starts full. ``None`` is unlimited.

Interface the messages handler relies on:

- ``Buckets.admit(cost) -> Admission``: take 1 request, ``cost.input_tokens`` and
  ``cost.max_tokens`` of output from the buckets, all or nothing, or raise ``ApiError(429, ...)``
  (``rate_limit_error``) with a ``retry-after`` header naming the limit that was hit.
- ``Buckets.settle(admission, output_tokens, input_tokens=None)``: the answer used
  ``output_tokens``; give back the rest of what ``admit`` took for output. ``input_tokens``, when
  given, is what the answer actually counts toward ITPM (the prompt less its cache reads): the
  difference from what ``admit`` took is given back or taken (a cache entry written or expired
  between admission and answer).

``MessageCost.input_tokens`` is what a request counts toward ITPM: its prompt less the tokens it
reads from the prompt cache (cache reads do not count toward ITPM on current models; writes do).
- ``Buckets.admit_files()``: one Files API request against its own budget (``files_rpm``), or
  raise ``ApiError(429, ...)``.
- ``Buckets.headers()``: ``anthropic-ratelimit-*`` headers (ASGI byte pairs) for every response:
  all twelve, ``{requests,input-tokens,output-tokens,tokens}-{limit,remaining,reset}``, always, as
  the API sends them. An unlimited (unconfigured) kind reports :data:`UNLIMITED` as its limit and
  its remaining, with ``reset`` now: a client that learns its limits from the headers is then
  effectively unlimited, as it should be, rather than told nothing.
- ``Buckets.configure(limits)``: new limits, live; current levels are kept (clamped).

A request that needs more than a bucket can ever hold (``max_tokens`` above the output bucket's
capacity, say) is answered 429 too, with a message that says it can never fit at this limit and
``x-should-retry: false``: waiting cannot help, only a smaller request can.

All state sits behind one lock: the app runs on one event loop, but the Message Batches runner
and tests touch the simulator from other threads, and an uncontended lock costs next to nothing.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from batcher import facts
from batcher.simulator.config import RateLimits
from batcher.simulator.errors import ApiError
from batcher.simulator.records import MessageCost

Clock = Callable[[], float]

#: The limit (and remaining) reported for a kind no limit is configured for: a billion a minute,
#: far above any tier (the largest published are a few thousand RPM and a few million ITPM), so a
#: client pacing itself by it never waits, yet a finite, well-formed number it can parse.
UNLIMITED: Final = 1_000_000_000

_DOCS: Final = "For details, refer to: https://docs.claude.com/en/api/rate-limits."
#: What the API calls each limit in its 429 message.
_UNITS: Final = {
    "requests": "requests per minute",
    "input-tokens": "input tokens per minute",
    "output-tokens": "output tokens per minute",
    "files": "Files API requests per minute",
}


class Bucket:
    """One continuously refilled bucket; all times come from the caller (no clock in here)."""

    def __init__(
        self, limit: float, burst_window_s: float, now: float, *, at_least_one: bool = False
    ) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        capacity = limit * burst_window_s / 60.0
        # A requests bucket that cannot hold one whole request would refuse everything forever.
        self.capacity = max(capacity, 1.0) if at_least_one else capacity
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> float:
        """Bring the level up to ``now`` and return it."""
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.level

    def wait_for(self, amount: float) -> float:
        """Seconds until the bucket holds ``amount`` (call after :meth:`refill`); 0 if it does."""
        short = amount - self.level
        return short / self.rate if short > 0 else 0.0

    def to_full(self) -> float:
        """Seconds until the bucket is full again (call after :meth:`refill`)."""
        return (self.capacity - self.level) / self.rate

    def resize(self, limit: float, burst_window_s: float, *, at_least_one: bool = False) -> None:
        """New limit and window (call after :meth:`refill`); the level is kept, clamped."""
        fresh = Bucket(limit, burst_window_s, self.stamp, at_least_one=at_least_one)
        self.limit, self.rate, self.capacity = fresh.limit, fresh.rate, fresh.capacity
        self.level = min(self.level, self.capacity)


@dataclass
class Admission:
    """What :meth:`Buckets.admit` took, so :meth:`Buckets.settle` can give back the unused part."""

    cost: MessageCost
    output_taken: float = 0.0
    input_taken: float = 0.0
    settled: bool = False


class Buckets:
    """The simulator's rate limits (see the module docstring)."""

    def __init__(self, limits: RateLimits, clock: Clock = time.monotonic, wall: Clock = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self.requests: Bucket | None = None
        self.input: Bucket | None = None
        self.output: Bucket | None = None
        self.files: Bucket | None = None
        self.configure(limits)

    def configure(self, limits: RateLimits) -> None:
        """Apply new limits live: a bucket that stays limited keeps its level (clamped to the new
        capacity), a newly limited one starts full, an unlimited one is dropped."""
        _check(limits)
        with self._lock:
            now = self._clock()
            window = limits.burst_window_s
            self.limits = dataclasses.replace(limits)  # edits in place count only via configure()
            self.requests = _reshape(self.requests, limits.rpm, window, now, at_least_one=True)
            self.input = _reshape(self.input, limits.itpm, window, now)
            self.output = _reshape(self.output, limits.otpm, window, now)
            self.files = _reshape(self.files, limits.files_rpm, window, now, at_least_one=True)

    def admit(self, cost: MessageCost) -> Admission:
        """Take the request's cost from every bucket, or nothing and raise the API's 429."""
        with self._lock:
            wants = (
                (self.requests, 1.0, "requests"),
                (self.input, float(cost.input_tokens), "input-tokens"),
                (self.output, float(cost.max_tokens), "output-tokens"),
            )
            now = self._clock()
            waits: list[tuple[float, str, Bucket, float]] = []
            for bucket, amount, kind in wants:
                if bucket is None:
                    continue
                bucket.refill(now)
                if amount > bucket.capacity:
                    raise _never_fits(kind, bucket, amount, self.limits.burst_window_s)
                wait = bucket.wait_for(amount)
                if wait > 0:
                    waits.append((wait, kind, bucket, amount))
            if waits:
                wait, kind, bucket, _ = max(waits, key=lambda w: w[0])
                raise _exceeded(kind, bucket.limit, wait)
            for bucket, amount, _kind in wants:
                if bucket is not None:
                    bucket.level -= amount
            return Admission(
                cost,
                output_taken=float(cost.max_tokens) if self.output else 0.0,
                input_taken=float(cost.input_tokens) if self.input else 0.0,
            )

    def settle(self, admission: Admission, output_tokens: int, input_tokens: int | None = None) -> None:
        """Give back the output tokens ``admit`` took beyond what the answer used, and square
        the input bucket with ``input_tokens`` when given (once)."""
        with self._lock:
            if admission.settled:
                return
            admission.settled = True
            now = self._clock()
            unused = admission.output_taken - output_tokens
            if self.output is not None and unused > 0:
                self.output.refill(now)
                self.output.level = min(self.output.capacity, self.output.level + unused)
            if self.input is not None and input_tokens is not None and admission.input_taken:
                self.input.refill(now)
                delta = admission.input_taken - input_tokens  # > 0: give back; < 0: take more
                self.input.level = min(self.input.capacity, self.input.level + delta)

    def admit_files(self) -> None:
        """One Files API request against its own budget, or the API's 429."""
        with self._lock:
            if self.files is None:
                return
            self.files.refill(self._clock())
            wait = self.files.wait_for(1.0)
            if wait > 0:
                raise _exceeded("files", self.files.limit, wait)
            self.files.level -= 1.0

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``anthropic-ratelimit-{kind}-{limit,remaining,reset}`` for every kind, always.

        ``remaining`` is rounded down to a whole unit; ``reset`` is the RFC 3339 time (whole
        seconds, rounded up) at which the bucket would be full again. ``tokens-*`` shows whichever
        of the input and output buckets is the most restrictive right now (the smaller share
        left), as the API does; a limited one over an unlimited one. An unlimited kind reports
        :data:`UNLIMITED`, all of it remaining, full now.
        """
        with self._lock:
            now = self._clock()
            wall = self._wall()
            out: list[tuple[bytes, bytes]] = []
            for kind, bucket in (
                ("requests", self.requests),
                ("input-tokens", self.input),
                ("output-tokens", self.output),
            ):
                if bucket is not None:
                    bucket.refill(now)
                    out.extend(_triple(kind, bucket, wall))
                else:
                    out.extend(_unlimited(kind, wall))
            tight = _most_restrictive(self.input, self.output)
            out.extend(_triple("tokens", tight, wall) if tight is not None else _unlimited("tokens", wall))
            return out


def _check(limits: RateLimits) -> None:
    """Refuse limits no bucket can follow, before any bucket changes."""
    if not limits.burst_window_s > 0:
        raise ApiError(400, f"limits.burst_window_s: must be positive, got {limits.burst_window_s}")
    for name in ("rpm", "itpm", "otpm", "files_rpm"):
        value = getattr(limits, name)
        if value is not None and not value > 0:
            raise ApiError(400, f"limits.{name}: must be positive or null (unlimited), got {value}")


def _reshape(
    bucket: Bucket | None, limit: float | None, window: float, now: float, *, at_least_one: bool = False
) -> Bucket | None:
    if limit is None:
        return None
    if bucket is None:
        return Bucket(limit, window, now, at_least_one=at_least_one)
    bucket.refill(now)
    bucket.resize(limit, window, at_least_one=at_least_one)
    return bucket


def _most_restrictive(a: Bucket | None, b: Bucket | None) -> Bucket | None:
    if a is None or b is None:
        return a or b
    return a if a.level / a.capacity <= b.level / b.capacity else b


def _triple(kind: str, bucket: Bucket, wall: float) -> list[tuple[bytes, bytes]]:
    names = _header_names(kind)
    return [
        (names[0], _number(bucket.limit)),
        (names[1], _number(max(0.0, math.floor(bucket.level)))),
        (names[2], _rfc3339(math.ceil(wall + bucket.to_full()))),
    ]


def _unlimited(kind: str, wall: float) -> list[tuple[bytes, bytes]]:
    names = _header_names(kind)
    return [(names[0], _UNLIMITED_BYTES), (names[1], _UNLIMITED_BYTES), (names[2], _rfc3339(math.ceil(wall)))]


@lru_cache(maxsize=8)
def _header_names(kind: str) -> tuple[bytes, bytes, bytes]:
    limit, remaining, reset = (
        facts.ratelimit_header(kind, f).encode() for f in ("limit", "remaining", "reset")
    )
    return limit, remaining, reset


def _number(value: float) -> bytes:
    return str(int(value) if float(value).is_integer() else value).encode()


_UNLIMITED_BYTES: Final = _number(UNLIMITED)


@lru_cache(maxsize=1024)
def _rfc3339(epoch_s: int) -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s)).encode()


def retry_after_s(wait: float) -> int:
    """The ``retry-after`` the API would send: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait - 1e-9))


def _exceeded(kind: str, limit: float, wait: float) -> ApiError:
    after = retry_after_s(wait)
    message = (
        f"This request would exceed the rate limit for your organization of "
        f"{_number(limit).decode()} {_UNITS[kind]}. {_DOCS} You can see the response "
        f"headers for current usage. Please reduce the prompt length or the maximum tokens "
        f"requested, or try again later."
    )
    return ApiError(429, message, error_type="rate_limit_error", headers={"retry-after": str(after)})


def _never_fits(kind: str, bucket: Bucket, amount: float, window: float) -> ApiError:
    message = (
        f"This request would exceed the rate limit for your organization of "
        f"{_number(bucket.limit).decode()} {_UNITS[kind]}: it needs "
        f"{_number(amount).decode()} {kind.replace('-', ' ')} at once, more than the "
        f"{_number(bucket.capacity).decode()} the limit allows in any {window:g} s, so it "
        f"can never be admitted at this limit. {_DOCS} Please reduce the prompt length or "
        f"the maximum tokens requested."
    )
    # Waiting cannot help; retry-after still says when the bucket is full, for clients that
    # ignore x-should-retry, so they do not spin.
    return ApiError(
        429,
        message,
        error_type="rate_limit_error",
        headers={"retry-after": str(retry_after_s(bucket.to_full())), "x-should-retry": "false"},
    )
