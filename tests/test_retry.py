"""Retry decisions: which errors, how long, and the bounds — no sockets, no sleeping."""

from __future__ import annotations

import random

import pytest

from batcher.api import errors
from batcher.retry import RetryPolicy, backoff_s, is_retryable, retrying, wait_for


def status_error(status: int, headers: dict | None = None, code: str | None = None) -> errors.APIStatusError:
    body = {
        "type": "error",
        "error": {"type": "x", "message": "m", **({"details": {"error_code": code}} if code else {})},
    }
    return errors.from_response(status, body, headers or {})


def test_backoff_grows_and_is_capped_with_jitter() -> None:
    policy, rng = RetryPolicy(base_s=1, cap_s=8), random.Random(1)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 8)]:
        waits = [backoff_s(attempt, policy, rng) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 1  # jittered


def test_retry_after_wins_when_sane() -> None:
    rng, policy = random.Random(0), RetryPolicy()
    assert wait_for(status_error(429, {"retry-after": "7"}), 1, policy, rng) == 7
    assert wait_for(status_error(429, {"retry-after-ms": "1500"}), 1, policy, rng) == 1.5
    # an absurd value falls back to our own backoff
    assert wait_for(status_error(429, {"retry-after": "86400"}), 1, policy, rng) <= policy.base_s


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (status_error(429), True),
        (status_error(529), True),
        (status_error(500), True),
        (status_error(400), False),
        (status_error(404), False),
        (status_error(401), False),
        (status_error(400, {"x-should-retry": "true"}), True),
        (status_error(429, code="enforced_spend_limit_reached"), False),
        (errors.APIConnectionError("reset"), True),
        (errors.APITimeoutError("slow"), True),
        (ValueError("bug"), False),
    ],
)
def test_is_retryable(exc: BaseException, retry: bool) -> None:
    assert is_retryable(exc) is retry


@pytest.mark.anyio
async def test_retrying_stops_after_max_attempts_and_reraises() -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise status_error(529)

    controller = retrying(RetryPolicy(max_attempts=3, base_s=0.001, cap_s=0.001))
    with pytest.raises(errors.OverloadedError):
        async for attempt in controller:
            with attempt:
                await flaky()
    assert calls == 3


@pytest.mark.anyio
async def test_retrying_does_not_retry_a_final_error() -> None:
    calls = 0
    controller = retrying(RetryPolicy(base_s=0.001))
    with pytest.raises(errors.BadRequestError):
        async for attempt in controller:
            with attempt:
                calls += 1
                raise status_error(400)
    assert calls == 1
