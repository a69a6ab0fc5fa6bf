"""Rate-limit buckets on a fake clock: refill, burst window, all-or-nothing, retry-after, headers."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from batcher.simulator.buckets import UNLIMITED, Buckets, retry_after_s
from batcher.simulator.config import RateLimits
from batcher.simulator.errors import ApiError
from batcher.simulator.records import MessageCost

WALL0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL0 + (self.t - 1000.0)

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **limits: float | None) -> Buckets:
    return Buckets(RateLimits(**limits), clock=clock, wall=clock.wall)  # type: ignore[arg-type]


def cost(input_tokens: int = 0, max_tokens: int = 0) -> MessageCost:
    return MessageCost(input_tokens, max_tokens, 0.0)


def refused(buckets: Buckets, c: MessageCost) -> ApiError:
    with pytest.raises(ApiError) as info:
        buckets.admit(c)
    assert info.value.status == 429
    assert info.value.error_type == "rate_limit_error"
    return info.value


def header_map(buckets: Buckets) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in buckets.headers()}


ALL_HEADERS = {
    f"anthropic-ratelimit-{k}-{f}"
    for k in ("requests", "input-tokens", "output-tokens", "tokens")
    for f in ("limit", "remaining", "reset")
}


def assert_unlimited(h: dict[str, str], kind: str, clock: FakeClock) -> None:
    assert h[f"anthropic-ratelimit-{kind}-limit"] == str(UNLIMITED)
    assert h[f"anthropic-ratelimit-{kind}-remaining"] == str(UNLIMITED)
    assert _parse(h[f"anthropic-ratelimit-{kind}-reset"]) == _at(math.ceil(clock.wall()))


def test_unlimited_admits_everything_and_reports_a_huge_limit(clock: FakeClock) -> None:
    buckets = make(clock)
    for _ in range(10_000):
        buckets.admit(cost(10**6, 10**6))
    buckets.admit_files()
    h = header_map(buckets)
    assert set(h) == ALL_HEADERS  # as the API: every kind, every time
    for kind in ("requests", "input-tokens", "output-tokens", "tokens"):
        assert_unlimited(h, kind, clock)


def test_burst_window_bounds_a_burst_then_refill_paces_it(clock: FakeClock) -> None:
    buckets = make(clock, rpm=60, burst_window_s=1)  # one request a second
    buckets.admit(cost())
    refused(buckets, cost())
    clock.advance(0.5)
    refused(buckets, cost())
    clock.advance(0.5)
    buckets.admit(cost())


def test_bucket_holds_burst_window_worth_and_never_more(clock: FakeClock) -> None:
    buckets = make(clock, rpm=120, burst_window_s=5)  # holds 10, refills 2 a second
    clock.advance(3600)  # a long idle time does not bank more than the window
    for _ in range(10):
        buckets.admit(cost())
    refused(buckets, cost())
    clock.advance(1.0)
    buckets.admit(cost())
    buckets.admit(cost())
    refused(buckets, cost())


def test_admission_is_all_or_nothing(clock: FakeClock) -> None:
    buckets = make(clock, rpm=60, itpm=6000, otpm=600, burst_window_s=10)
    # holds 10 requests, 1000 input tokens, 100 output tokens
    buckets.admit(cost(900, 50))
    error = refused(buckets, cost(200, 10))  # input short; requests and output are not
    assert "input tokens per minute" in error.message
    h = header_map(buckets)
    assert h["anthropic-ratelimit-requests-remaining"] == "9"
    assert h["anthropic-ratelimit-output-tokens-remaining"] == "50"
    assert h["anthropic-ratelimit-input-tokens-remaining"] == "100"
    buckets.admit(cost(100, 50))  # exactly what is left of each fits


def test_message_names_the_limit_and_its_value(clock: FakeClock) -> None:
    buckets = make(clock, rpm=240, burst_window_s=0.25)
    buckets.admit(cost())
    error = refused(buckets, cost())
    assert "This request would exceed the rate limit for your organization" in error.message
    assert "of 240 requests per minute" in error.message
    buckets = make(clock, otpm=8000, burst_window_s=60)
    buckets.admit(cost(0, 8000))
    assert "of 8000 output tokens per minute" in refused(buckets, cost(0, 1)).message


@pytest.mark.parametrize(
    ("wait", "expected"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.01, 2), (2.5, 3), (59.2, 60)]
)
def test_retry_after_rounds_up_to_whole_seconds_at_least_one(wait: float, expected: int) -> None:
    assert retry_after_s(wait) == expected


def test_retry_after_is_the_wait_of_the_shortest_bucket(clock: FakeClock) -> None:
    buckets = make(clock, rpm=60, itpm=600, burst_window_s=60)  # refills 1 req/s, 10 tok/s
    buckets.admit(cost(600))
    error = refused(buckets, cost(250))  # requests fine; input needs 25 s
    assert error.headers["retry-after"] == "25"
    assert "input tokens" in error.message
    clock.advance(24.5)
    assert refused(buckets, cost(250)).headers["retry-after"] == "1"
    clock.advance(0.5)
    buckets.admit(cost(250))


def test_retry_after_names_the_longest_wait_when_several_are_short(clock: FakeClock) -> None:
    buckets = make(clock, rpm=60, otpm=60, burst_window_s=1)  # 1 request, 1 output token
    buckets.admit(cost(0, 1))
    clock.advance(0.5)
    error = refused(buckets, cost(0, 1))
    assert error.headers["retry-after"] == "1"
    buckets = make(clock, rpm=60, otpm=6, burst_window_s=10)  # 10 requests, 1 output token
    buckets.admit(cost(0, 1))
    error = refused(buckets, cost(0, 1))  # output needs 10 s, requests none
    assert error.headers["retry-after"] == "10"
    assert "output tokens per minute" in error.message


def test_a_cost_beyond_capacity_can_never_fit_and_says_so(clock: FakeClock) -> None:
    buckets = make(clock, itpm=60_000, burst_window_s=1)  # holds 1000 input tokens
    error = refused(buckets, cost(1001))
    assert "can never be admitted" in error.message
    assert "1001" in error.message and "1000" in error.message
    assert error.headers["x-should-retry"] == "false"
    assert int(error.headers["retry-after"]) >= 1
    buckets.admit(cost(1000))  # the refusal took nothing


def test_settle_refunds_unused_output_once(clock: FakeClock) -> None:
    buckets = make(clock, otpm=6000, burst_window_s=1)  # holds 100 output tokens
    admission = buckets.admit(cost(0, 100))
    refused(buckets, cost(0, 30))
    buckets.settle(admission, 70)  # 30 unused come back
    buckets.settle(admission, 70)  # a second settle gives nothing more
    assert header_map(buckets)["anthropic-ratelimit-output-tokens-remaining"] == "30"
    buckets.admit(cost(0, 30))
    refused(buckets, cost(0, 1))


def test_settle_squares_input_with_what_the_answer_counted(clock: FakeClock) -> None:
    buckets = make(clock, itpm=6000, burst_window_s=1)  # holds 100 input tokens
    admission = buckets.admit(cost(60))
    buckets.settle(admission, 0, input_tokens=20)  # a cache read after all: 40 come back
    assert header_map(buckets)["anthropic-ratelimit-input-tokens-remaining"] == "80"
    admission = buckets.admit(cost(20))
    buckets.settle(admission, 0, input_tokens=50)  # the cache entry expired: 30 more taken
    assert header_map(buckets)["anthropic-ratelimit-input-tokens-remaining"] == "30"
    buckets.settle(admission, 0, input_tokens=0)  # once only
    assert header_map(buckets)["anthropic-ratelimit-input-tokens-remaining"] == "30"


def test_settle_never_overfills(clock: FakeClock) -> None:
    buckets = make(clock, otpm=6000, burst_window_s=1)
    admission = buckets.admit(cost(0, 100))
    clock.advance(5)  # full again already
    buckets.settle(admission, 0)
    assert header_map(buckets)["anthropic-ratelimit-output-tokens-remaining"] == "100"


def test_live_reconfigure_keeps_levels_clamped(clock: FakeClock) -> None:
    buckets = make(clock, rpm=600, burst_window_s=1)  # holds 10
    for _ in range(4):
        buckets.admit(cost())
    buckets.configure(RateLimits(rpm=1200, burst_window_s=1))  # holds 20: level stays 6
    assert header_map(buckets)["anthropic-ratelimit-requests-remaining"] == "6"
    buckets.configure(RateLimits(rpm=180, burst_window_s=1))  # holds 3: level clamps to 3
    assert header_map(buckets)["anthropic-ratelimit-requests-remaining"] == "3"
    buckets.configure(RateLimits(rpm=180, itpm=60, burst_window_s=1))  # new bucket starts full
    assert header_map(buckets)["anthropic-ratelimit-input-tokens-remaining"] == "1"
    buckets.configure(RateLimits())  # unlimited again
    assert header_map(buckets)["anthropic-ratelimit-requests-limit"] == str(UNLIMITED)
    buckets.admit(cost(10**9, 10**9))


def test_bad_limits_are_refused_before_anything_changes(clock: FakeClock) -> None:
    buckets = make(clock, rpm=60, burst_window_s=1)
    for bad in (RateLimits(rpm=60, itpm=0), RateLimits(rpm=-1), RateLimits(burst_window_s=0)):
        with pytest.raises(ApiError) as info:
            buckets.configure(bad)
        assert info.value.status == 400
    assert header_map(buckets)["anthropic-ratelimit-requests-limit"] == "60"


def test_requests_bucket_holds_at_least_one_request(clock: FakeClock) -> None:
    buckets = make(clock, rpm=30, burst_window_s=1)  # half a request: would refuse everything
    buckets.admit(cost())
    assert refused(buckets, cost()).headers["retry-after"] == "2"


def test_files_budget_is_separate(clock: FakeClock) -> None:
    buckets = make(clock, rpm=60, files_rpm=120, burst_window_s=1)  # 2 file requests a second
    buckets.admit_files()
    buckets.admit_files()
    with pytest.raises(ApiError) as info:
        buckets.admit_files()
    assert info.value.status == 429
    assert info.value.headers["retry-after"] == "1"
    assert "Files API requests per minute" in info.value.message
    buckets.admit(cost())  # messages are not touched by file requests
    clock.advance(0.5)
    buckets.admit_files()


def test_headers_report_limit_remaining_and_reset(clock: FakeClock) -> None:
    buckets = make(clock, rpm=60, itpm=6000, otpm=1200, burst_window_s=10)
    # holds 10 requests (1/s), 1000 input (100/s), 200 output (20/s)
    buckets.admit(cost(500, 50))
    clock.advance(0.5)
    h = header_map(buckets)
    assert h["anthropic-ratelimit-requests-limit"] == "60"
    assert h["anthropic-ratelimit-requests-remaining"] == "9"  # 9.5 rounds down
    assert h["anthropic-ratelimit-input-tokens-limit"] == "6000"
    assert h["anthropic-ratelimit-input-tokens-remaining"] == "550"
    assert h["anthropic-ratelimit-output-tokens-remaining"] == "160"
    wall = clock.wall()
    # full again: requests in 0.5 s, input in 4.5 s, output in 2 s (rounded up to whole seconds)
    assert _parse(h["anthropic-ratelimit-requests-reset"]) == _at(math.ceil(wall + 0.5))
    assert _parse(h["anthropic-ratelimit-input-tokens-reset"]) == _at(math.ceil(wall + 4.5))
    assert _parse(h["anthropic-ratelimit-output-tokens-reset"]) == _at(math.ceil(wall + 2))
    # tokens-*: the most restrictive of input (55% left) and output (80% left)
    assert h["anthropic-ratelimit-tokens-limit"] == "6000"
    assert h["anthropic-ratelimit-tokens-remaining"] == "550"
    assert h["anthropic-ratelimit-tokens-reset"] == h["anthropic-ratelimit-input-tokens-reset"]


def test_unlimited_kinds_report_the_unlimited_default(clock: FakeClock) -> None:
    buckets = make(clock, otpm=1000, burst_window_s=60)
    buckets.admit(cost(10**6, 10))  # input is unlimited; output full but for 10
    h = header_map(buckets)
    assert set(h) == ALL_HEADERS
    assert_unlimited(h, "requests", clock)
    assert_unlimited(h, "input-tokens", clock)
    assert h["anthropic-ratelimit-output-tokens-remaining"] == "990"
    # tokens-*: the limited bucket, not the unlimited one, even when the limited one is fuller
    assert h["anthropic-ratelimit-tokens-limit"] == "1000"
    assert h["anthropic-ratelimit-tokens-remaining"] == "990"
    clock.advance(60)
    assert header_map(buckets)["anthropic-ratelimit-tokens-limit"] == "1000"


def test_headers_are_ascii_byte_pairs(clock: FakeClock) -> None:
    for name, value in make(clock, rpm=50, itpm=30_000, otpm=8000).headers():
        assert isinstance(name, bytes) and isinstance(value, bytes)
        assert name == name.lower()
        value.decode("ascii")


def _parse(stamp: str) -> dt.datetime:
    assert stamp.endswith("Z")
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _at(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)
