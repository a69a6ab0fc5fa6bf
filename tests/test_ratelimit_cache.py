"""The limiter and the prompt cache: reads do not count toward ITPM (batcher.ratelimit.itpm_tokens),
and the input ratio is learned on the uncached part of the estimate (ratio_sample)."""

from __future__ import annotations

from batcher.ratelimit import Cost, Limiter, Limits, itpm_tokens, ratio_sample


def test_a_warm_request_counts_only_its_uncached_tokens() -> None:
    assert itpm_tokens(Cost(3000, 100, prefix_tokens=2000, warm=True)) == 1000
    assert itpm_tokens(Cost(3000, 100, prefix_tokens=2000, warm=False)) == 3000  # the write counts
    assert itpm_tokens(Cost(3000, 100)) == 3000


def test_the_ratio_is_learned_on_the_uncached_part() -> None:
    read = {"input_tokens": 1100, "cache_read_input_tokens": 2000}
    assert ratio_sample(read, 3000, 2000) == 1.1
    written = {"input_tokens": 1100, "cache_creation_input_tokens": 2000}
    assert ratio_sample(written, 3000, 2000) == 1.1
    # The cache did not take the prefix (under the minimum): the whole estimate is compared.
    assert ratio_sample({"input_tokens": 3300}, 3000, 2000) == 1.1
    assert ratio_sample({}, 3000, 2000) is None


def test_reads_neither_take_itpm_nor_skew_the_ratio() -> None:
    now = [0.0]
    limiter = Limiter(Limits(itpm=60_000), clock=lambda: now[0])
    warm = Cost(3000, 10, prefix_tokens=2000, warm=True)
    assert limiter.cost_of(warm)["input-tokens"] == 1000
    ticket = limiter.acquire_now(warm)
    limiter.answered(ticket, {}, {"input_tokens": 1000, "cache_read_input_tokens": 2000, "output_tokens": 5})
    assert limiter.input_ratio == 1.0
    assert limiter.per_request["input-tokens"] == 1000


def _admitted(cost: Cost, usage: dict[str, int], seconds: float) -> int:
    """Requests a limiter at 60k ITPM lets through in ``seconds`` of a fake clock, each answered
    at once with ``usage`` (the API's word: cache reads apart from input_tokens)."""
    now = [0.0]
    limiter = Limiter(Limits(itpm=60_000), clock=lambda: now[0])
    sent = 0
    while now[0] < seconds:
        if limiter.delay(limiter.cost_of(cost), now[0]) == 0:
            ticket = limiter.acquire_now(cost)
            limiter.answered(ticket, {"anthropic-ratelimit-input-tokens-limit": "60000"}, usage)
            limiter.release(ticket)
            sent += 1
        now[0] += 0.01
    return sent


def test_a_cached_job_sends_more_requests_a_minute_under_the_same_itpm() -> None:
    # ~1,700 input tokens a row, 1,480 of them the shared prefix.
    plain = _admitted(Cost(1700, 10), {"input_tokens": 1700}, 60.0)
    cached = _admitted(
        Cost(1700, 10, prefix_tokens=1480, warm=True),
        {"input_tokens": 220, "cache_read_input_tokens": 1480},
        60.0,
    )
    assert plain <= 36  # 60k ITPM at 98%: ~35 rows of 1,700 (and the first burst)
    assert cached >= 6 * plain
