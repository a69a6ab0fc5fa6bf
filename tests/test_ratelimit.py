"""Client-side rate limits: the decisions on a fake clock, no sockets."""

from __future__ import annotations

import math
import time

import pytest

from batcher import facts
from batcher.api import errors
from batcher.models import load_registry
from batcher.ratelimit import (
    BURST_S,
    DEFAULT_PAUSE_S,
    MAX_PAUSE_S,
    RATE_SHARE,
    Bucket,
    Cost,
    Limiter,
    Limits,
    Observed,
    RateLimitConfigError,
    aimd_decrease,
    aimd_increase,
    allowed_rps,
    apply_headers,
    bucket_wait,
    corrected,
    describe,
    littles_window,
    load_presets,
    observe,
    pause_after_429,
    refill,
    request_cost,
    seed_limits,
)

WALL = 1_800_000_000.0  # a fixed wall-clock second for reset headers


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def headers(**kinds: tuple[float, float, float]) -> dict[str, str]:
    """``requests=(limit, remaining, reset_in_s)`` → the API's header triple per kind."""
    out: dict[str, str] = {}
    for name, (limit, remaining, reset_in) in kinds.items():
        kind = name.replace("_", "-")
        out[facts.ratelimit_header(kind, "limit")] = str(limit)
        out[facts.ratelimit_header(kind, "remaining")] = str(remaining)
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(WALL + reset_in))
        out[facts.ratelimit_header(kind, "reset")] = reset
    return out


def api_error(status: int, hdrs: dict[str, str] | None = None) -> errors.APIStatusError:
    body = {"type": "error", "error": {"type": facts.ERROR_TYPES.get(status, "api_error"), "message": "m"}}
    return errors.from_response(status, body, hdrs or {})


def limiter(clock: FakeClock, seed: Limits | None = None, concurrency: int = 64) -> Limiter:
    return Limiter(seed or Limits(240, None, None), concurrency, "test", clock=clock, wall=lambda: WALL)


# --- buckets ----------------------------------------------------------------------------------


def test_a_bucket_refills_at_a_share_of_the_limit_and_holds_a_short_burst() -> None:
    bucket = Bucket.full(240, now=0.0)  # 4 a second
    assert bucket.rate == pytest.approx(4 * RATE_SHARE)
    assert bucket.capacity == pytest.approx(4 * RATE_SHARE * BURST_S)
    bucket.level = 0.0
    refill(bucket, 0.25)
    assert bucket.level == pytest.approx(0.25 * bucket.rate)
    refill(bucket, 100.0)
    assert bucket.level == pytest.approx(bucket.capacity)  # never above the burst


def test_the_wait_is_the_shortfall_over_the_rate() -> None:
    bucket = Bucket.full(600, now=0.0)  # 9.8 a second, holds 4.9
    for _ in range(4):
        assert bucket_wait(bucket, 1, 0.0) == 0
        bucket.level -= 1
    wait = bucket_wait(bucket, 1, 0.0)  # 0.9 left: not a whole request
    assert wait == pytest.approx((1 - bucket.level) / bucket.rate)
    assert bucket_wait(bucket, 1, wait) == pytest.approx(0, abs=1e-9)


def test_a_request_larger_than_the_burst_waits_for_a_full_bucket_then_owes() -> None:
    bucket = Bucket.full(6000, now=0.0)  # 98 tokens a second, a 49-token burst
    wait = bucket_wait(bucket, 300, 0.0)  # the bucket grows to hold one whole request ...
    assert bucket.capacity == 300
    assert wait == pytest.approx((300 - 49) / bucket.rate)  # ... and it fills at the rate
    assert bucket_wait(bucket, 300, wait) == pytest.approx(0, abs=1e-9)
    bucket.level -= 300
    bucket.level -= 300  # a second one in debt
    assert bucket_wait(bucket, 300, wait) == pytest.approx(600 / bucket.rate)


def test_refunds_are_not_clipped_by_the_burst() -> None:
    bucket = Bucket.full(60, now=0.0)
    bucket.level += 5  # an answer gave back unused output
    refill(bucket, 10.0)
    assert bucket.level == pytest.approx(bucket.capacity + 5)


# --- headers ----------------------------------------------------------------------------------


def test_observe_reads_every_kind_and_the_reset_as_seconds() -> None:
    seen = observe(headers(requests=(240, 17, 3), input_tokens=(180000, 15000, 1)), WALL)
    assert seen == {"requests": Observed(240, 17, 3.0), "input-tokens": Observed(180000, 15000, 1.0)}
    assert observe({"content-type": "application/json"}, WALL) is None
    # case does not matter, and a nonsense value is ignored rather than trusted
    assert observe({"Anthropic-RateLimit-Requests-Limit": "50"}, WALL) == {"requests": Observed(50)}
    assert observe({"anthropic-ratelimit-requests-limit": "lots"}, WALL) == {}


def test_a_correction_adopts_the_limit_and_never_holds_more_than_remains() -> None:
    bucket = Bucket.full(50, now=0.0)
    fixed = corrected(bucket, Observed(1000, 500), 0.0)
    assert fixed.limit == 1000
    assert fixed.level == pytest.approx(Bucket.full(50, 0.0).capacity)  # 500 left is more than we hold
    fixed = corrected(bucket, Observed(1000, 0), 1.0)
    assert fixed.level == 0  # someone else is using the key: the API's word wins
    fresh = corrected(None, Observed(6000, 20), 0.0)
    assert fresh.limit == 6000 and fresh.level == 20


def test_an_answer_without_a_kind_means_that_kind_is_not_limited() -> None:
    buckets = {k: Bucket.full(100, 0.0) for k in ("requests", "input-tokens", "output-tokens")}
    apply_headers(buckets, observe(headers(requests=(240, 10, 1)), WALL), 0.0, answered=False)
    assert set(buckets) == {"requests", "input-tokens", "output-tokens"}  # an error proves nothing
    apply_headers(buckets, observe(headers(requests=(240, 10, 1)), WALL), 0.0, answered=True)
    assert set(buckets) == {"requests"} and buckets["requests"].limit == 240
    apply_headers(buckets, None, 0.0, answered=True)
    assert buckets == {}


def test_a_429_pauses_for_retry_after_else_the_exhausted_reset_else_a_default() -> None:
    exhausted = headers(requests=(240, 0, 4), input_tokens=(1000, 900, 9))
    assert pause_after_429({"retry-after": "2", **exhausted}, observe(exhausted, WALL)) == 2
    assert pause_after_429({"retry-after-ms": "1500"}, None) == 1.5
    assert pause_after_429(exhausted, observe(exhausted, WALL)) == 4
    assert pause_after_429({}, None) == DEFAULT_PAUSE_S
    assert pause_after_429({"retry-after": "100000"}, None) == MAX_PAUSE_S


# --- in flight --------------------------------------------------------------------------------


def test_littles_window_follows_throughput_times_latency_under_the_ceiling() -> None:
    assert littles_window(4.0, 1.0, 500) == math.ceil(4 * 1.5) + 2
    assert littles_window(0.8, 1.0, 500) == 4
    assert littles_window(100.0, 2.0, 64) == 64
    assert littles_window(None, 1.0, 64) == 64
    assert littles_window(4.0, None, 64) == 64


def test_allowed_rps_is_the_tightest_budget_at_the_typical_cost() -> None:
    buckets = {"requests": Bucket.full(240, 0.0), "input-tokens": Bucket.full(180_000, 0.0)}
    rps = allowed_rps(buckets, {"requests": 1, "input-tokens": 1400})
    assert rps == pytest.approx(180_000 / 60 * RATE_SHARE / 1400)
    assert allowed_rps({}, {}) is None


def test_aimd_halves_what_is_in_use_and_grows_one_a_round_trip() -> None:
    assert aimd_decrease(500, 8) == 4  # halving an unused ceiling would change nothing
    assert aimd_decrease(1.5, 8) == 1.0
    window = 4.0
    for _ in range(4):  # one round trip's answers
        window = aimd_increase(window, 64)
    assert 4.9 < window < 5.1
    assert aimd_increase(64.0, 64) == 64


# --- the limiter on a fake clock ----------------------------------------------------------------


def test_concurrency_is_a_ceiling_not_a_target() -> None:
    clock = FakeClock()
    lim = limiter(clock, Limits(50, 30_000, 8_000), concurrency=500)
    ticket = lim.acquire_now(Cost(1000, 100))
    clock.advance(1.0)
    seen = headers(requests=(50, 48, 2), input_tokens=(30_000, 29_000, 2), output_tokens=(8_000, 7_900, 1))
    lim.answered(ticket, seen, {"input_tokens": 1000, "output_tokens": 100})
    lim.release(ticket)
    # 50 RPM at a 1 s round trip needs about one request in flight, not 500
    # (the tightest budget here is 30k input tokens a minute at 1,000 a request: 0.49 a second)
    assert lim.in_flight_limit() == littles_window(30_000 / 60 * RATE_SHARE / 1000, 1.0, 500) == 3


def test_requests_are_paced_at_the_learned_limit() -> None:
    clock = FakeClock()
    lim = limiter(clock, Limits(50, None, None))  # the tier-1 seed: under one a second
    first = lim.acquire_now(Cost(10, 10))
    assert lim.delay(lim.cost_of(Cost(10, 10)), clock()) > 1.0
    lim.answered(first, headers(requests=(240, 19, 1)), {})
    lim.release(first)
    sent = [clock()]
    while len(sent) < 20:
        wait = lim.delay(lim.cost_of(Cost(10, 10)), clock())
        if wait > 0:
            clock.advance(wait)
            continue
        lim.release(lim.acquire_now(Cost(10, 10)))
        sent.append(clock())
    rate = (len(sent) - 3) / (sent[-1] - sent[2])  # past the first short burst
    assert rate == pytest.approx(4 * RATE_SHARE, rel=0.01)


def test_answers_settle_output_and_input_against_usage() -> None:
    clock = FakeClock()
    lim = limiter(clock, Limits(None, 60_000, 6_000))
    before_out = lim.buckets["output-tokens"].level
    ticket = lim.acquire_now(Cost(1000, 300))
    lim.answered(
        ticket,
        headers(input_tokens=(60_000, 50_000, 1), output_tokens=(6_000, 5_000, 1)),
        {"input_tokens": 1100, "output_tokens": 40},
    )
    assert lim.buckets["output-tokens"].level == pytest.approx(before_out - 40)
    assert lim.input_ratio == pytest.approx(1 + 0.1 * 0.1)  # learning that estimates run 10% low
    assert lim.cost_of(Cost(1000, 300))["input-tokens"] == math.ceil(1000 * lim.input_ratio)


def test_one_429_pauses_every_new_send_and_empties_the_buckets() -> None:
    clock = FakeClock()
    lim = limiter(clock, Limits(240, None, None))
    ticket = lim.acquire_now(Cost(10, 10))
    burst = lim.buckets["requests"].burst_s
    lim.failed(ticket, api_error(429, {"retry-after": "3", **headers(requests=(240, 0, 5))}))
    lim.release(ticket)
    assert lim.rate_limited == 1
    assert lim.buckets["requests"].burst_s == burst / 2
    assert lim.delay(lim.cost_of(Cost(10, 10)), clock()) == pytest.approx(3)
    clock.advance(3)
    assert lim.delay(lim.cost_of(Cost(10, 10)), clock()) == 0


def test_a_429_that_can_never_fit_does_not_pause_the_job() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    ticket = lim.acquire_now(Cost(10, 10))
    lim.failed(ticket, api_error(429, {"retry-after": "3", "x-should-retry": "false"}))
    assert lim.rate_limited == 0 and lim.paused_until == 0


def test_overload_shrinks_in_flight_once_a_round_trip_and_answers_grow_it_back() -> None:
    clock = FakeClock()
    lim = limiter(clock, Limits(None, None, None), concurrency=64)
    tickets = [lim.acquire_now(Cost(10, 10)) for _ in range(10)]
    lim.failed(tickets[0], api_error(529))
    assert lim.window == 32
    lim.failed(tickets[1], api_error(500))  # the same overload seen twice: one decrease
    assert lim.window == 32
    clock.advance(1.5)
    lim.failed(tickets[2], api_error(503))
    assert lim.window == 16
    lim.failed(tickets[3], errors.APIConnectionError("reset"))  # a cut connection is not overload
    assert lim.window == 16
    for t in tickets[4:]:
        lim.answered(t, {}, {})
    assert 16 < lim.window < 17
    assert lim.overloaded == 3


def test_server_errors_keep_the_request_charge_and_return_the_output() -> None:
    clock = FakeClock()
    lim = limiter(clock, Limits(600, None, 6_000))
    start_req, start_out = lim.buckets["requests"].level, lim.buckets["output-tokens"].level
    ticket = lim.acquire_now(Cost(10, 50))
    lim.failed(ticket, api_error(529))
    assert lim.buckets["requests"].level == pytest.approx(start_req - 1)
    assert lim.buckets["output-tokens"].level == pytest.approx(start_out)


def test_an_api_without_limits_is_followed_and_the_picture_described() -> None:
    clock = FakeClock()
    lim = limiter(clock, Limits(50, 30_000, 8_000))
    assert lim.describe() == "50 rpm, 30k itpm, 8000 otpm (test) | in flight 0/64"
    ticket = lim.acquire_now(Cost(10, 10))
    lim.answered(ticket, {"content-type": "application/json"}, {})
    assert lim.buckets == {} and lim.source == "API sends no limits"
    assert describe(lim.snapshot()).startswith("no limits (API sends no limits)")


# --- seeds and costs ------------------------------------------------------------------------------


def test_seeds_start_at_the_lowest_tier_unless_the_job_says_otherwise() -> None:
    default, tiers = load_presets()
    assert default == "tier-1" and tiers["tier-1"] == Limits(50, 30_000, 8_000)
    assert seed_limits() == (tiers["tier-1"], "tier-1")
    assert seed_limits("tier-2")[0] == tiers["tier-2"]
    limits, source = seed_limits("tier-2", rpm=10)
    assert limits == Limits(10, 450_000, 90_000) and "job" in source
    with pytest.raises(RateLimitConfigError, match="tier-9"):
        seed_limits("tier-9")


def test_a_request_costs_its_images_and_text_and_an_unknown_image_its_budget() -> None:
    profile = load_registry().get("claude-haiku-5-5")
    assert profile is not None
    body = {
        "model": profile.id,
        "max_tokens": 60,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": "http://x/a.jpg"}},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                    },
                    {"type": "text", "text": "a" * 400},
                ],
            }
        ],
    }
    cost = request_cost(body, profile, [None, 1369], 60)
    assert cost.max_tokens == 60
    text = math.ceil(400 * profile.text_token_factor / 4)
    assert cost.input_tokens == profile.image_token_budget + 1369 + text + 3 + 2 * 3


# --- the one real wait ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_acquire_waits_its_turn_in_real_time() -> None:
    import anyio

    lim = Limiter(Limits(1200, None, None), 64, "test")  # ~19.6 a second, a burst of ~9.8
    sent: list[float] = []

    async def one() -> None:
        ticket = await lim.acquire(Cost(1, 1))
        sent.append(time.monotonic())
        lim.release(ticket)

    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(14):
            tg.start_soon(one)
    # the burst goes at once, the rest one every ~51 ms
    assert sent[-1] - start == pytest.approx((14 - 9.8) / (20 * RATE_SHARE), abs=0.05)


@pytest.mark.anyio
async def test_time_queued_for_a_turn_is_not_retry_time() -> None:
    import anyio

    from batcher.retry import RetryPolicy, retrying

    calls = 0
    controller = retrying(RetryPolicy(max_attempts=5, max_wait_s=0.05, base_s=0.001, cap_s=0.001))
    async for attempt in controller:
        with attempt:
            calls += 1
            await anyio.sleep(0.06)  # waiting under the limits, longer than the whole retry budget
            if calls < 3:
                raise api_error(529)
    assert calls == 3
