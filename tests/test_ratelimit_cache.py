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
