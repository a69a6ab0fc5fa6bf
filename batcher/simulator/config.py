"""What a simulator instance is set to: limits, latency, faults, clock, platform."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

Platform = Literal["anthropic", "bedrock", "vertex"]


@dataclass
class RateLimits:
    """Per-minute budgets; ``None`` is unlimited.

    A bucket holds at most ``burst_window_s`` seconds' worth of its limit and refills
    continuously, so a 60 RPM limit with a 1 s window is enforced as one request a second.
    """

    rpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None
    burst_window_s: float = 60.0
    files_rpm: float | None = None


@dataclass
class Latency:
    """Seconds a messages request takes: base + jitter + per megapixel of input + per output token."""

    base_s: float = 0.0
    jitter_s: float = 0.0
    per_megapixel_s: float = 0.0
    per_output_token_s: float = 0.0


@dataclass
class Faults:
    """Probabilities, per messages request, of each injected failure (drawn from ``seed``); the
    answer faults (``refusal``, ``mismatch``, ``mismatch_first``: an answer, not an error, live
    and in batches alike); and the fatal faults, which start after a number of paid requests and
    then never stop.

    A fatal ``*_after`` of ``N`` lets ``N`` paid requests (``POST /v1/messages`` and
    ``POST /v1/messages/batches`` that pass authentication) through, counted from when the setting
    was last set, and fails every one after; ``None`` never. See :mod:`batcher.simulator.faults`.
    """

    overloaded: float = 0.0  # 529 overloaded_error
    server_error: float = 0.0  # 500 api_error
    gateway_timeout: float = 0.0  # 504 timeout_error
    drop: float = 0.0  # the connection is cut mid-response
    stall: float = 0.0  # no answer for stall_s (past any sane client timeout)
    stall_s: float = 30.0
    #: the answer is a refusal: ``stop_reason`` "refusal", a short text, billed (not an error)
    refusal: float = 0.0
    #: a structured answer (``output_config.format`` or a forced tool) is well-formed JSON that
    #: fits the schema as sent but ignores every constraint a decoder cannot enforce
    mismatch: float = 0.0
    #: deterministic: the first structured answer for each distinct set of nonces is a mismatch,
    #: every later one for the same nonces is normal (a re-ask succeeds)
    mismatch_first: bool = False
    seed: int = 0
    #: 401 authentication_error, then on every /v1 request of any kind: the key was revoked
    auth_error_after: int | None = None
    #: 402 billing_error on every paid request
    billing_error_after: int | None = None
    #: 429 rate_limit_error with ``error.details.error_code = "enforced_spend_limit_reached"``
    spend_limit_after: int | None = None


@dataclass
class BatchClock:
    """How fast Message Batches move: tests want seconds, not the API's hour."""

    #: seconds from creation until a batch has processed every request
    duration_s: float = 1.0
    #: share of requests that come back ``expired`` instead of being processed
    expire_share: float = 0.0
    #: prompt caching in batches is best effort: the chance that a lookup that would hit does,
    #: drawn per ``custom_id`` from ``seed`` (1.0: always, for exact tests)
    cache_hit: float = 0.9
    seed: int = 0


@dataclass
class SimConfig:
    #: None: any non-empty key is accepted; otherwise only this one
    api_key: str | None = None
    platform: Platform = "anthropic"
    #: the simulator's notion of today (model retirement); None: the real date
    today: dt.date | None = None
    limits: RateLimits = field(default_factory=RateLimits)
    latency: Latency = field(default_factory=Latency)
    faults: Faults = field(default_factory=Faults)
    batches: BatchClock = field(default_factory=BatchClock)
    #: None: the Models API is served. 404, 405 or 501: play a gateway in front of the API that has
    #: no Models API route (a proxy, Bedrock- or Vertex-style endpoints): ``GET /v1/models...``
    #: answers that status with the gateway's own body, not the API's error shape.
    models_route_missing: int | None = None
    #: seconds added to the prompt cache's clock: a test lets cache entries expire by raising it
    #: (``POST /_control {"cache_clock_skew_s": 301}``) instead of waiting
    cache_clock_skew_s: float = 0.0

    def current_date(self) -> dt.date:
        return self.today or dt.datetime.now(dt.UTC).date()
