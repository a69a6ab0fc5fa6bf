"""When to send a failed request again, and how long to wait first.

The decisions are pure functions (tested without sockets); :func:`retrying` wires them into
tenacity for the request stage. A row that runs out of attempts or of waiting time in one run is
*not* a final error: the caller leaves it for the next run.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import tenacity

from batcher.api import errors


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    #: total seconds one row may spend waiting between its attempts in this run
    max_wait_s: float = 600.0
    base_s: float = 0.5
    cap_s: float = 30.0


def backoff_s(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Exponential backoff with jitter for the ``attempt``-th failure (1-based).

    The jitter spreads clients that failed together so they do not come back together.
    """
    ceiling = min(policy.cap_s, policy.base_s * 2.0 ** (attempt - 1))
    return ceiling * (0.5 + 0.5 * rng.random())


def wait_for(exc: BaseException, attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Seconds to wait before the next attempt: the API's ``retry-after`` when it gave one."""
    if isinstance(exc, errors.APIStatusError):
        asked = exc.retry_after
        if asked is not None and 0 <= asked <= 60:
            return asked
    return backoff_s(attempt, policy, rng)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, errors.APIError) and exc.retryable and not exc.fatal


def retrying(
    policy: RetryPolicy,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> tenacity.AsyncRetrying:
    """A tenacity controller for one row's request: retryable errors only, bounded both ways.

    ``sleep`` replaces the wait between attempts (the pipeline's ends early when the run stops).
    """
    rng = rng or random.Random()

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return wait_for(exc, state.attempt_number, policy, rng) if exc else 0.0

    controller = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(is_retryable),
        wait=wait,
        stop=tenacity.stop_after_attempt(policy.max_attempts) | _WaitedTooLong(policy.max_wait_s),
        reraise=True,
    )
    # tenacity's default sleep is private, so there is no value to pass for "the default".
    return controller if sleep is None else controller.copy(sleep=sleep)


class _WaitedTooLong(tenacity.stop.stop_base):
    """Stop once a row's waits between attempts would pass ``max_wait_s``."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s

    def __call__(self, state: tenacity.RetryCallState) -> bool:
        # Only the sleeps between attempts count: time a row spends queued for its turn under the
        # rate limits is not retry time (at 500 workers on a tier-1 key that queue is long).
        return state.idle_for + state.upcoming_sleep > self.max_wait_s
