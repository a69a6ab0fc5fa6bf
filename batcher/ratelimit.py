"""Client-side rate limits: sit on the API's limits instead of fighting them.

Three continuously refilled budgets mirror the buckets the API keeps for the organisation:
requests, input tokens and output tokens a minute. Before a request is sent it takes its cost
from each — 1 request, its estimated input tokens, its ``max_tokens`` of output — and when the
answer comes back the estimate is settled against ``usage`` (unused output comes back, input the
estimate got wrong is given back or charged), as the API itself does.

The limits are learned, not configured. They start from a tier preset in
``configs/ratelimits.toml`` (the lowest unless the job names one) or the job's ``[limits]``, and
every response's ``anthropic-ratelimit-{kind}-{limit,remaining}`` headers correct them: the
limit is adopted, and a budget never holds more than the API says remains. A successful answer
with no rate-limit header at all means the API enforces nothing we can see: the seed is dropped.

Why this holds the limit without 429s:

- The client's buckets hold only :data:`BURST_S` seconds' worth (or one request, if that is
  more), far less than the API's burst window, and refill at :data:`RATE_SHARE` of the limit. The
  API's bucket therefore stays nearly full, and the difference absorbs network jitter.
- A 429 means the picture was wrong: new sends pause for the whole job until ``retry-after``
  (else the reset header), the buckets take the 429's own headers, and the burst shrinks.
- 529 and 5xx shrink the number of requests in flight (multiplicative decrease, at most once a
  round trip); each answer grows it back by about one a round trip (additive increase).
- In flight follows Little's law: throughput the budgets allow × observed latency, with
  headroom. ``concurrency`` is only the ceiling, so 500 on a tier-1 key opens a handful of
  connections, not 500.

The decisions are pure functions over plain values (tested with a fake clock); :class:`Limiter`
holds the state and is the only part that waits.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio

from batcher import facts
from batcher.api import errors
from batcher.errors import JobError
from batcher.exits import EXIT_CONFIG

Clock = Callable[[], float]

#: The three budgets, by the names the API's headers use.
KINDS: Final = ("requests", "input-tokens", "output-tokens")
#: Seconds' worth of its limit a client bucket holds. Small on purpose: the API punishes bursts
#: (its own window may be a second), and a small client burst leaves the API's bucket headroom.
BURST_S: Final = 0.5
#: The smallest burst a run of 429s can shrink a bucket to.
MIN_BURST_S: Final = 0.1
#: Share of the limit the client refills at: 2% slack that lets the API's bucket recover from
#: any jitter, so it never runs dry at the limit.
RATE_SHARE: Final = 0.98
#: How long to pause new sends after a 429 that said nothing about when to come back.
DEFAULT_PAUSE_S: Final = 1.0
#: The longest pause a 429 may impose; past that the row's own retry policy decides.
MAX_PAUSE_S: Final = 60.0
#: In flight above throughput × latency: headroom for latency jitter, plus a few spare.
LITTLE_HEADROOM: Final = 1.5
LITTLE_SPARE: Final = 2
#: Multiplicative decrease of the in-flight window on overload.
AIMD_DECREASE: Final = 0.5
#: Weight of a new sample in the moving averages (latency, cost per request, estimate ratio).
EWMA: Final = 0.1
#: How far the learned input-token correction may move an estimate.
RATIO_BOUNDS: Final = (0.5, 2.0)
#: Seconds between two snapshots of the picture written to the job state.
SNAPSHOT_EVERY_S: Final = 5.0


class GaveUp(Exception):
    """A wait for the limits ended because the run is stopping; nothing was sent."""


class RateLimitConfigError(JobError, ValueError):
    """A tier name or preset file that cannot be used; the message names it."""

    exit_code = EXIT_CONFIG


# --- limits and presets ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-minute limits; ``None`` is unlimited."""

    rpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None

    def by_kind(self) -> dict[str, float | None]:
        return {"requests": self.rpm, "input-tokens": self.itpm, "output-tokens": self.otpm}


def presets_path() -> Path:
    """``configs/ratelimits.toml``: beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs" / "ratelimits.toml", here / "_configs" / "ratelimits.toml"):
        if candidate.is_file():
            return candidate
    raise RateLimitConfigError("configs/ratelimits.toml not found beside or inside the batcher package")


def load_presets(path: Path | None = None) -> tuple[str, dict[str, Limits]]:
    """(default tier name, every tier's limits) from the presets file."""
    path = path or presets_path()
    with path.open("rb") as fh:
        table = tomllib.load(fh)
    tiers: dict[str, Limits] = {
        name: Limits(t.get("rpm"), t.get("itpm"), t.get("otpm"))
        for name, t in (table.get("tiers") or {}).items()
    }
    default = table.get("default")
    if not isinstance(default, str) or default not in tiers:
        raise RateLimitConfigError(f"{path}: default: {default!r} is not one of its tiers")
    return default, tiers


def job_seed(job: Any) -> tuple[Limits, str]:
    """A :class:`~batcher.config.JobConfig`'s ``[limits]`` seed and where it comes from (a
    process's limiter and a cluster's start from the same)."""
    lim = job.limits
    return seed_limits(lim.tier, lim.rpm, lim.itpm, lim.otpm)


def seed_limits(
    tier: str | None = None,
    rpm: float | None = None,
    itpm: float | None = None,
    otpm: float | None = None,
    *,
    presets: tuple[str, dict[str, Limits]] | None = None,
) -> tuple[Limits, str]:
    """Where a run's picture starts: the job's own numbers over its tier over the lowest tier.

    Returns the limits and where they came from (for the display).
    """
    default, tiers = presets or load_presets()
    name = tier or default
    if name not in tiers:
        raise RateLimitConfigError(f"limits.tier: {name!r} is not a known tier ({', '.join(tiers)})")
    base = tiers[name]
    own = rpm is not None or itpm is not None or otpm is not None
    limits = Limits(
        rpm if rpm is not None else base.rpm,
        itpm if itpm is not None else base.itpm,
        otpm if otpm is not None else base.otpm,
    )
    return limits, (f"job [limits] over {name}" if own else name)


# --- one bucket ------------------------------------------------------------------------------


@dataclass(slots=True)
class Bucket:
    """One client budget, in units of its kind; all times come from the caller."""

    limit: float  # per minute
    level: float
    stamp: float
    burst_s: float = BURST_S
    #: the largest single cost seen: a bucket must always be able to hold one whole request
    largest: float = 1.0

    @property
    def rate(self) -> float:
        """Units a second the client refills at (a share of the API's limit)."""
        return self.limit / 60.0 * RATE_SHARE

    @property
    def capacity(self) -> float:
        return max(self.rate * self.burst_s, self.largest)

    @classmethod
    def full(cls, limit: float, now: float, burst_s: float = BURST_S) -> Bucket:
        bucket = cls(limit, 0.0, now, burst_s)
        bucket.level = bucket.capacity
        return bucket


def refill(bucket: Bucket, now: float) -> None:
    """Bring the level up to ``now``. Refunds may have left it above capacity: never cut it."""
    if now > bucket.stamp:
        if bucket.level < bucket.capacity:
            bucket.level = min(bucket.capacity, bucket.level + (now - bucket.stamp) * bucket.rate)
        bucket.stamp = now


def bucket_wait(bucket: Bucket, amount: float, now: float) -> float:
    """Seconds until ``bucket`` can give ``amount`` (0: now). A request larger than the burst
    waits for a full bucket and then goes into debt, which later refills pay back."""
    bucket.largest = max(bucket.largest, amount)
    refill(bucket, now)
    short = amount - bucket.level
    # A shortfall below a millionth of a unit is float noise, not a reason to sleep.
    return short / bucket.rate if short > 1e-6 else 0.0


# --- what the API says -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observed:
    """One kind's ``anthropic-ratelimit-*`` triple from a response."""

    limit: float
    remaining: float | None = None
    #: seconds from when the answer was read until the API's bucket is full again
    reset_in_s: float | None = None


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _seconds_until(raw: str | None, wall_now: float) -> float | None:
    if not raw:
        return None
    try:
        when = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - wall_now)


def observe(headers: Mapping[str, str], wall_now: float) -> dict[str, Observed] | None:
    """The API's picture from one response's headers, by kind; ``None`` when it sent no
    rate-limit header at all (an API, or a proxy, that tells nothing)."""
    if not any(str(k).lower().startswith("anthropic-ratelimit-") for k in headers):
        return None
    lower = {str(k).lower(): v for k, v in headers.items()}
    seen: dict[str, Observed] = {}
    for kind in KINDS:
        limit = _number(lower.get(facts.ratelimit_header(kind, "limit")))
        if limit is None or limit <= 0:
            continue
        seen[kind] = Observed(
            limit,
            _number(lower.get(facts.ratelimit_header(kind, "remaining"))),
            _seconds_until(lower.get(facts.ratelimit_header(kind, "reset")), wall_now),
        )
    return seen


def corrected(bucket: Bucket | None, seen: Observed, now: float) -> Bucket:
    """``bucket`` brought in line with what the API said: its limit adopted, and no more left in
    it than the API says remains (the API's word includes everyone using the key)."""
    if bucket is None:
        bucket = Bucket.full(seen.limit, now)
    else:
        refill(bucket, now)
        bucket.limit = seen.limit
    if seen.remaining is not None:
        bucket.level = min(bucket.level, seen.remaining)
    return bucket


def apply_headers(
    buckets: dict[str, Bucket], seen: dict[str, Observed] | None, now: float, *, answered: bool
) -> None:
    """Correct every bucket from one response. Only a successful answer may say a kind is not
    limited (error answers may come from a proxy that strips headers)."""
    if seen is None:
        if answered:
            buckets.clear()
        return
    for kind in KINDS:
        if kind in seen:
            buckets[kind] = corrected(buckets.get(kind), seen[kind], now)
        elif answered:
            buckets.pop(kind, None)


def pause_after_429(headers: Mapping[str, str], seen: dict[str, Observed] | None) -> float:
    """Seconds every new send waits after a 429: ``retry-after`` if given, else the reset of an
    exhausted budget, else a short default."""
    asked = errors.retry_after_seconds({str(k).lower(): v for k, v in headers.items()})
    if asked is None and seen:
        resets = [
            s.reset_in_s
            for s in seen.values()
            if s.reset_in_s is not None and s.remaining is not None and s.remaining < 1
        ]
        asked = min(resets) if resets else None
    if asked is None:
        asked = DEFAULT_PAUSE_S
    return min(MAX_PAUSE_S, max(0.0, asked))


# --- how many in flight ----------------------------------------------------------------------


def littles_window(rate_rps: float | None, latency_s: float | None, ceiling: int) -> int:
    """Requests in flight needed to carry ``rate_rps`` at ``latency_s`` (Little's law), with
    headroom; the ceiling when either is unknown or unbounded."""
    if rate_rps is None or latency_s is None or not math.isfinite(rate_rps):
        return ceiling
    return max(1, min(ceiling, math.ceil(rate_rps * latency_s * LITTLE_HEADROOM) + LITTLE_SPARE))


def allowed_rps(buckets: Mapping[str, Bucket], per_request: Mapping[str, float]) -> float | None:
    """Requests a second the budgets allow at the typical cost per request; None: unbounded."""
    rates = [b.rate / max(per_request.get(kind, 1.0), 1e-9) for kind, b in buckets.items()]
    return min(rates) if rates else None


def aimd_decrease(window: float, in_use: int) -> float:
    """Overloaded: halve what is actually in use (halving an unused ceiling would change nothing)."""
    return max(1.0, min(window, float(in_use)) * AIMD_DECREASE)


def aimd_increase(window: float, ceiling: int) -> float:
    """An answer: about one more request in flight per round trip."""
    return min(float(ceiling), window + 1.0 / max(window, 1.0))


def ewma(old: float | None, sample: float) -> float:
    return sample if old is None else old + EWMA * (sample - old)


def shrink_burst(buckets: Mapping[str, Bucket]) -> None:
    """A 429 while pacing: the API's burst window is smaller than assumed; send smoother."""
    for bucket in buckets.values():
        bucket.burst_s = max(MIN_BURST_S, bucket.burst_s / 2)
        bucket.level = min(bucket.level, bucket.capacity)


def is_overload(exc: BaseException) -> bool:
    """Errors that mean the API is struggling: 529, any 5xx, a timeout."""
    if isinstance(exc, errors.APITimeoutError):
        return True
    return isinstance(exc, errors.APIStatusError) and (exc.status == 529 or exc.status >= 500)


# --- the limiter -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cost:
    """What one request will take: estimated input tokens and its ``max_tokens``.

    A request that carries a prompt-cache breakpoint says how many of its estimated input tokens
    are the cached prefix (``prefix_tokens``) and whether the prefix is expected to be read
    (``warm``, the online write-first gate knows): cache reads do not count toward ITPM."""

    input_tokens: int
    max_tokens: int
    #: estimated tokens of the cached prefix within ``input_tokens`` (0: no breakpoint)
    prefix_tokens: int = 0
    #: the prefix is expected to be read from the cache (not written)
    warm: bool = False


def itpm_tokens(cost: Cost) -> int:
    """The estimated input tokens a request counts toward ITPM: all of them, less the prefix when
    it is expected to be read from the cache (reads do not count on current models; a write
    does)."""
    if cost.warm:
        return max(0, cost.input_tokens - cost.prefix_tokens)
    return cost.input_tokens


def ratio_sample(usage: Mapping[str, Any], estimate: int, prefix_tokens: int) -> float | None:
    """One sample of the input estimate's error: the tokens the API counted over the tokens
    estimated for the same part of the prompt. When the cache took the prefix (read or written:
    ``input_tokens`` then excludes it), the uncached part is compared with the estimate less the
    prefix, so neither reads nor writes skew what is learned. None: nothing to learn from."""
    fresh = int(usage.get("input_tokens") or 0)
    cached = int(usage.get("cache_read_input_tokens") or 0) + int(
        usage.get("cache_creation_input_tokens") or 0
    )
    base = estimate - prefix_tokens if cached and prefix_tokens else estimate
    if not fresh or base <= 0:
        return None
    return fresh / base


def request_cost(
    body: Mapping[str, Any], profile: Any, image_tokens: Sequence[int | None], max_tokens: int
) -> Cost:
    """A messages body's :class:`Cost`: its estimated input (an image whose tokens are not known,
    one sent by URL, counts at the model's budget, the most it can cost) and ``max_tokens``."""
    from batcher.tokens import estimate_body_tokens

    budget = profile.image_token_budget

    def tokens_of(n: int, _block: dict[str, Any]) -> int:
        known = image_tokens[n] if n < len(image_tokens) else None
        return budget if known is None else known

    text, images = estimate_body_tokens(body, profile, tokens_of)
    return Cost(text + images, max_tokens)


@dataclass(slots=True)
class Ticket:
    """What :meth:`Limiter.acquire` took for one request, until it is settled."""

    taken: dict[str, float]
    #: the whole input estimate (cached prefix included) and the prefix's part of it
    estimate: int
    sent_at: float
    done: bool = False
    prefix_tokens: int = 0


@dataclass
class Limiter:
    """The job's shared picture of the limits; every request passes :meth:`acquire`."""

    seed: Limits = field(default_factory=Limits)
    concurrency: int = 32
    source: str = "unset"
    clock: Clock = time.monotonic
    wall: Clock = time.time

    def __post_init__(self) -> None:
        now = self.clock()
        self.buckets: dict[str, Bucket] = {
            kind: Bucket.full(limit, now) for kind, limit in self.seed.by_kind().items() if limit
        }
        self.paused_until = 0.0
        self.window = float(self.concurrency)  # the AIMD window, below the ceiling
        self.in_flight = 0
        self.latency_s: float | None = None
        self.per_request: dict[str, float] = {"requests": 1.0}
        self.input_ratio = 1.0
        self.rate_limited = 0
        self.overloaded = 0
        self.last_seen: dict[str, Observed] = {}
        self._last_decrease = -math.inf
        self._last_snapshot = -math.inf
        self._turn = anyio.Lock(fast_acquire=True)
        self._changed: anyio.Event | None = None

    @classmethod
    def for_job(cls, job: Any) -> Limiter:
        """From a :class:`~batcher.config.JobConfig`: its [limits] seed and run.concurrency."""
        limits, source = job_seed(job)
        return cls(limits, job.run.concurrency, source)

    # -- decisions over the current state --

    def cost_of(self, cost: Cost) -> dict[str, float]:
        """What a request takes from each budget (the input estimate corrected by experience; a
        prefix expected to be read from the cache is not counted: :func:`itpm_tokens`)."""
        return {
            "requests": 1.0,
            "input-tokens": math.ceil(itpm_tokens(cost) * self.input_ratio),
            "output-tokens": float(cost.max_tokens),
        }

    def in_flight_limit(self) -> int:
        rps = allowed_rps(self.buckets, self.per_request)
        little = littles_window(rps, self.latency_s, self.concurrency)
        return max(1, min(little, int(self.window), self.concurrency))

    def delay(self, taken: Mapping[str, float], now: float) -> float:
        """Seconds before a request costing ``taken`` may go (inf: wait for one in flight)."""
        if self.in_flight >= self.in_flight_limit():
            return math.inf
        wait = max(0.0, self.paused_until - now)
        for kind, bucket in self.buckets.items():
            wait = max(wait, bucket_wait(bucket, taken[kind], now))
        return wait

    # -- the one wait --

    async def acquire(self, cost: Cost, give_up: anyio.Event | None = None) -> Ticket:
        """Wait (first come, first served) until ``cost`` fits, then take it.

        ``give_up`` set (the run is stopping) ends the wait with :class:`GaveUp`: a request that
        has not been sent yet is dropped rather than sent after the user asked to stop.
        """
        taken = self.cost_of(cost)
        async with self._turn:
            while (wait := self.delay(taken, self.clock())) > 0:
                if give_up is not None and give_up.is_set():
                    raise GaveUp
                if self._changed is None:
                    self._changed = anyio.Event()
                # Any answer may raise a limit or free a slot: wake up and look again.
                with anyio.move_on_after(wait):
                    await self._changed.wait()
            if give_up is not None and give_up.is_set():
                raise GaveUp
            return self._take(taken, cost)

    def wake(self) -> None:
        """Make every waiter look again now (e.g. at its ``give_up`` event)."""
        self._notify()

    def acquire_now(self, cost: Cost) -> Ticket:
        """Take ``cost`` now, whatever :meth:`delay` says (for callers that did their own waiting)."""
        return self._take(self.cost_of(cost), cost)

    def _take(self, taken: dict[str, float], cost: Cost) -> Ticket:
        now = self.clock()
        for kind, bucket in self.buckets.items():
            bucket.largest = max(bucket.largest, taken[kind])
            refill(bucket, now)
            bucket.level -= taken[kind]
        self.in_flight += 1
        return Ticket(taken, cost.input_tokens, now, prefix_tokens=cost.prefix_tokens)

    @contextlib.asynccontextmanager
    async def slot(self, cost: Cost, give_up: anyio.Event | None = None) -> AsyncIterator[Slot]:
        """``async with limiter.slot(cost) as s: resp = await send(); s.answered(headers, usage)``.

        Leaving by an API error settles it as that error; leaving otherwise (cancelled) keeps
        the charge (the request may have reached the API) and frees the slot.
        """
        ticket = await self.acquire(cost, give_up)
        held = Slot(self, ticket)
        try:
            yield held
        except errors.APIError as exc:
            self.failed(ticket, exc)
            raise
        finally:
            self.release(ticket)

    # -- settling --

    def answered(self, ticket: Ticket, headers: Mapping[str, str], usage: Mapping[str, Any] | None) -> None:
        """An answer: settle the estimate against ``usage``, learn, and take the API's headers."""
        now = self.clock()
        usage = usage or {}
        # What counts toward ITPM: fresh input and cache writes; never cache reads.
        used_in = int(usage.get("input_tokens") or 0) + int(usage.get("cache_creation_input_tokens") or 0)
        used_out = int(usage.get("output_tokens") or 0)
        self._settle(ticket, {"input-tokens": used_in, "output-tokens": used_out}, now)
        self.latency_s = ewma(self.latency_s, now - ticket.sent_at)
        sample = ratio_sample(usage, ticket.estimate, ticket.prefix_tokens)
        if sample is not None:
            ratio = ewma(self.input_ratio, sample)
            self.input_ratio = min(RATIO_BOUNDS[1], max(RATIO_BOUNDS[0], ratio))
        self.per_request["input-tokens"] = ewma(self.per_request.get("input-tokens"), used_in)
        self.per_request["output-tokens"] = ewma(self.per_request.get("output-tokens"), used_out)
        self._take_headers(headers, now, answered=True)
        self.window = aimd_increase(self.window, self.concurrency)

    def failed(self, ticket: Ticket, exc: errors.APIError) -> None:
        """An error: settle what the API charged for it and react to what it means."""
        now = self.clock()
        if isinstance(exc, errors.APIStatusError):
            if exc.status == 429 or exc.status < 500:
                # Refused before it was counted: it costs nothing.
                self._settle(ticket, {"requests": 0, "input-tokens": 0, "output-tokens": 0}, now)
            else:
                # Counted, but it produced no output.
                self._settle(ticket, {"output-tokens": 0}, now)
            self._take_headers(exc.headers, now, answered=False)
            if isinstance(exc, errors.RateLimitError) and exc.retryable:
                self._rate_limited(exc.headers, now)
        # A connection error keeps its whole charge: the API may have answered and billed it.
        if is_overload(exc):
            self.overloaded += 1
            if now - self._last_decrease >= (self.latency_s or 1.0):
                self.window = aimd_decrease(self.window, self.in_flight_limit())
                self._last_decrease = now
        self._notify()

    def release(self, ticket: Ticket) -> None:
        if not ticket.done:
            ticket.done = True
            self.in_flight -= 1
            self._notify()

    def _settle(self, ticket: Ticket, used: Mapping[str, float], now: float) -> None:
        for kind, amount in used.items():
            bucket = self.buckets.get(kind)
            if bucket is not None and kind in ticket.taken:
                refill(bucket, now)
                bucket.level += ticket.taken[kind] - amount

    def _take_headers(self, headers: Mapping[str, str], now: float, *, answered: bool) -> None:
        seen = observe(headers, self.wall())
        if seen is not None:
            self.last_seen = seen
            self.source = "API headers"
        elif answered and self.buckets:
            self.source = "API sends no limits"
        apply_headers(self.buckets, seen, now, answered=answered)

    def _rate_limited(self, headers: Mapping[str, str], now: float) -> None:
        self.rate_limited += 1
        pause = pause_after_429(headers, observe(headers, self.wall()))
        self.paused_until = max(self.paused_until, now + pause)
        shrink_burst(self.buckets)
        for bucket in self.buckets.values():
            bucket.level = min(bucket.level, 0.0)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # -- the picture, for people --

    def snapshot(self) -> dict[str, Any]:
        """The live picture as plain data (the progress display and ``batcher status``)."""
        now = self.clock()
        limits = {kind: (self.buckets[kind].limit if kind in self.buckets else None) for kind in KINDS}
        remaining = {kind: s.remaining for kind, s in self.last_seen.items()}
        return {
            "limits": limits,
            "api_remaining": remaining,
            "source": self.source,
            "in_flight": self.in_flight,
            "in_flight_limit": self.in_flight_limit(),
            "rate_limited": self.rate_limited,
            "overloaded": self.overloaded,
            "paused_s": round(max(0.0, self.paused_until - now), 2),
            "latency_s": None if self.latency_s is None else round(self.latency_s, 3),
            "at": round(self.wall(), 3),
        }

    def snapshot_due(self) -> bool:
        """True at most every :data:`SNAPSHOT_EVERY_S` (writing the state on every answer is waste)."""
        now = self.clock()
        if now - self._last_snapshot < SNAPSHOT_EVERY_S:
            return False
        self._last_snapshot = now
        return True

    def describe(self) -> str:
        return describe(self.snapshot())


#: A per-minute limit at or above this is shown as no limit at all: no key has a billion requests or
#: tokens a minute, and that is what the simulator (and some gateways) report for "unlimited".
SHOWN_UNLIMITED_AT: Final = 1_000_000_000


def describe(snapshot: Mapping[str, Any]) -> str:
    """One short line: the limits and where they come from, what the API says is left, in flight.
    An unlimited kind is left out, as one with no limit is."""
    limits = snapshot.get("limits") or {}
    left = snapshot.get("api_remaining") or {}
    per_minute = {"requests": "rpm", "input-tokens": "itpm", "output-tokens": "otpm"}
    units = {"requests": "req", "input-tokens": "in", "output-tokens": "out"}
    limited = [k for k in KINDS if limits.get(k) and limits[k] < SHOWN_UNLIMITED_AT]
    shown = [f"{short_number(limits[k])} {per_minute[k]}" for k in limited]
    parts = [f"{', '.join(shown) if shown else 'no limits'} ({snapshot.get('source', '?')})"]
    remaining = [
        f"{short_number(left[k])} {units[k]}"
        for k in KINDS
        if left.get(k) is not None and left[k] < SHOWN_UNLIMITED_AT
    ]
    if remaining:
        parts.append("API left " + ", ".join(remaining))
    parts.append(f"in flight {snapshot.get('in_flight', 0)}/{snapshot.get('in_flight_limit', '?')}")
    if snapshot.get("paused_s"):
        parts.append(f"paused {snapshot['paused_s']:g}s")
    return " | ".join(parts)


def short_number(value: float) -> str:
    """``8000``, ``30k``, ``1.5M``, ``2G``: three significant digits, the unit chosen after rounding
    (999,999 is ``1M``, never ``1e+03k``)."""
    if value < 10_000:
        return f"{value:g}"
    scaled = float(value)
    for unit in "kMGTP":
        scaled /= 1000
        text = f"{scaled:.3g}"
        if float(text) < 1000:
            return text + unit
    return f"{value:.3g}"


@dataclass(slots=True)
class Slot:
    """A request's place under the limits (see :meth:`Limiter.slot`)."""

    limiter: Limiter
    ticket: Ticket

    def answered(self, headers: Mapping[str, str], usage: Mapping[str, Any] | None) -> None:
        self.limiter.answered(self.ticket, headers, usage)
