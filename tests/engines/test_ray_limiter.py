"""The cluster's one rate budget (batcher.engines.ray_limiter): the limiter actor on a local Ray
instance, used by two worker actors in their own processes, on a manual clock (grants are counted
per minute of the limiter's clock, never against wall time)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from batcher.api import errors
from batcher.engines.ray_limiter import Failure, LimiterService, start_limiter, stop_limiter
from batcher.ratelimit import Limits
from tests.helpers import LimiterWorker

ray = pytest.importorskip("ray")


def _cluster(rpm: float, workers: int = 2, **kw: Any) -> tuple[Any, list[Any]]:
    key = uuid.uuid4().hex[:12]
    actor = start_limiter(key, Limits(rpm=rpm), 32, "test", manual_clock=True, **kw)
    worker = ray.remote(LimiterWorker).options(num_cpus=0)
    return actor, [worker.remote(key, f"w{n}") for n in range(workers)]


def _stats_until(actor: Any, done: Any, tries: int = 2000) -> dict[str, int]:
    """The actor's counts once ``done(stats)`` holds (polled: a state the workers settle into)."""
    import time

    for _ in range(tries):
        stats: dict[str, int] = ray.get(actor.stats.remote())
        if done(stats):
            return stats
        time.sleep(0.01)
    raise AssertionError(f"limiter never reached the expected state: {stats}")


def test_failure_round_trip_keeps_what_the_limiter_reads() -> None:
    exc = errors.from_response(429, {}, {"retry-after": "7", "anthropic-ratelimit-requests-limit": "50"})
    again = Failure.of(exc).error()
    assert type(again) is errors.RateLimitError
    assert again.retryable and isinstance(again, errors.APIStatusError)
    assert again.retry_after == 7 and again.headers["anthropic-ratelimit-requests-limit"] == "50"
    assert type(Failure.of(errors.APITimeoutError("t")).error()) is errors.APITimeoutError
    assert type(Failure.of(errors.APIConnectionError("c")).error()) is errors.APIConnectionError
    spend = errors.from_response(
        429,
        {
            "error": {
                "type": "rate_limit_error",
                "message": "m",
                "details": {"error_code": "enforced_spend_limit_reached"},
            }
        },
        {},
    )
    assert type(Failure.of(spend).error()) is type(spend)


@pytest.mark.anyio
async def test_service_forgets_a_dead_owners_tickets() -> None:
    from batcher.ratelimit import Cost

    service = LimiterService(Limits(rpm=6000), 4, "test", manual_clock=True)
    first = await service.acquire("dead", "r1", Cost(1, 1))
    await service.acquire("alive", "r2", Cost(1, 1))
    assert first is not None and service.limiter.in_flight == 2
    assert await service.forget("dead") == 1
    assert service.limiter.in_flight == 1 and (await service.stats())["held"] == 1


@pytest.mark.anyio
async def test_service_abandon_before_the_acquire_arrives_takes_nothing() -> None:
    from batcher.ratelimit import Cost

    service = LimiterService(Limits(rpm=60), 4, "test", manual_clock=True)
    await service.abandon("r1")
    assert await service.acquire("w", "r1", Cost(1, 1)) is None
    assert service.limiter.in_flight == 0


@pytest.mark.slow
def test_two_workers_never_exceed_the_rpm_together(local_ray: None) -> None:
    rpm, loops = 240, 3
    actor, workers = _cluster(rpm)
    headers = {"anthropic-ratelimit-requests-limit": str(rpm)}
    try:
        runs = [w.hammer.remote(loops, headers) for w in workers]
        everyone_waits = lambda s: s["waiting"] == loops * len(workers) and s["held"] == 0  # noqa: E731
        _stats_until(actor, everyone_waits)
        start = ray.get(actor.stats.remote())["granted"]
        # One minute of the limiter's clock, in steps that refill less than its burst holds (a
        # longer step would overflow the small client bucket and show the burst, not the rate).
        for _ in range(240):
            ray.get(actor.advance.remote(0.25))
            _stats_until(actor, everyone_waits)
        in_the_minute = ray.get(actor.stats.remote())["granted"] - start
        ray.get([w.stop.remote() for w in workers])
        per_worker = ray.get(runs)
    finally:
        stop_limiter(actor)
    # Together at most the limit (the client refills at 98% of it), and close to it.
    assert in_the_minute <= rpm
    assert in_the_minute >= 0.9 * rpm
    assert all(n > 0 for n in per_worker)


@pytest.mark.slow
def test_a_429_seen_by_one_worker_pauses_the_other(local_ray: None) -> None:
    actor, (a, b) = _cluster(6000)
    try:
        assert ray.get(b.try_now.remote())
        ray.get(a.one.remote(429, {"retry-after": "30"}))
        assert ray.get(b.view.remote())["paused_s"] == 30
        assert not ray.get(b.try_now.remote())
        ray.get(actor.advance.remote(29.0))
        assert not ray.get(b.try_now.remote())
        ray.get(actor.advance.remote(2.0))
        assert ray.get(b.try_now.remote())
        ray.get(b.one.remote(None, {"anthropic-ratelimit-requests-limit": "6000"}))
    finally:
        stop_limiter(actor)


@pytest.mark.slow
def test_limits_learned_from_one_workers_headers_apply_to_both(local_ray: None) -> None:
    actor, (a, b) = _cluster(60)
    try:
        ray.get(
            a.one.remote(
                None,
                {"anthropic-ratelimit-requests-limit": "600", "anthropic-ratelimit-requests-remaining": "0"},
            )
        )
        assert ray.get(b.view.remote())["limits"]["requests"] == 600
        # The API said nothing remains: the other worker waits too.
        assert not ray.get(b.try_now.remote())
        # A second refills 9.8 requests at the learned limit (0.98 at the seed's 60: not one).
        ray.get(actor.advance.remote(1.0))
        assert ray.get(b.try_now.remote())
        assert ray.get(a.try_now.remote())
    finally:
        stop_limiter(actor)


@pytest.mark.slow
def test_a_wait_given_up_takes_nothing(local_ray: None) -> None:
    actor, (a,) = _cluster(60, workers=1)
    try:
        ray.get(a.one.remote(None, {"anthropic-ratelimit-requests-limit": "60"}))
        assert ray.get(a.give_up_waiting.remote())
        stats = ray.get(actor.stats.remote())
        assert stats["held"] == 0 and stats["waiting"] == 0
        assert ray.get(actor.view.remote()).snapshot["in_flight"] == 0
    finally:
        stop_limiter(actor)


# --- the cluster's write-first gate of the cached prefix -------------------------------------------


def _point() -> Any:
    from batcher.core.cache import CachePoint

    return CachePoint(ttl="5m", anchor="examples", prefix_tokens=2000)


@pytest.mark.anyio
async def test_one_request_in_the_cluster_writes_the_prefix_the_rest_wait_then_read() -> None:
    import anyio

    service = LimiterService(Limits(rpm=6000), 4, "test", manual_clock=True)
    assert await service.prefix_turn("w1:1", _point()) == "write"
    turns: list[str | None] = []

    async def wait(request: str) -> None:
        turns.append(await service.prefix_turn(request, _point()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "w2:1")
        tg.start_soon(wait, "w1:2")
        await anyio.sleep(0.05)
        assert turns == [] and (await service.stats())["waiting"] == 2  # both wait on the writer
        await service.prefix_done("write", True, 0.0)
    assert turns == ["read", "read"]


@pytest.mark.anyio
async def test_a_writer_without_an_answer_passes_the_turn_and_a_given_up_wait_takes_none() -> None:
    import anyio

    service = LimiterService(Limits(rpm=6000), 4, "test", manual_clock=True)
    assert await service.prefix_turn("w1:1", _point()) == "write"
    turns: list[str | None] = []

    async def wait(request: str) -> None:
        turns.append(await service.prefix_turn(request, _point()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "w2:1")
        tg.start_soon(wait, "w2:2")
        await anyio.sleep(0.05)
        await service.abandon("w2:2")  # its run is stopping
        await anyio.sleep(0.05)
        assert turns == [None]
        await service.prefix_done("write", False, 0.0)  # the writer failed: the next one writes
    assert turns == [None, "write"]
