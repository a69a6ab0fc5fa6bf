"""Cost from usage: each token kind at its price, long-prompt tier, batch discount."""

from __future__ import annotations

import pytest

from batcher.cost import usage_cost
from batcher.models import load_registry

REG = load_registry()


def test_plain_usage() -> None:
    haiku4 = REG["claude-haiku-4-5"]  # $1 / $5
    assert usage_cost(haiku4, {"input_tokens": 1_000_000, "output_tokens": 0}) == pytest.approx(1.0)
    assert usage_cost(haiku4, {"input_tokens": 1000, "output_tokens": 200}) == pytest.approx(0.002)


def test_cache_reads_and_writes_priced_as_such() -> None:
    haiku4 = REG["claude-haiku-4-5"]
    usage = {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_input_tokens": 1_000_000,
        "cache_creation_input_tokens": 1_000_000,
    }
    assert usage_cost(haiku4, usage) == pytest.approx(0.1 + 1.25)
    assert usage_cost(haiku4, usage, cache_ttl="1h") == pytest.approx(0.1 + 2.0)


def test_the_answers_own_split_of_5m_and_1h_writes_wins_over_the_assumed_ttl() -> None:
    haiku4 = REG["claude-haiku-4-5"]  # writes: $1.25 (5m), $2 (1h) a million
    usage = {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 3_000_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1_000_000, "ephemeral_1h_input_tokens": 2_000_000},
    }
    for ttl in ("5m", "1h"):
        assert usage_cost(haiku4, usage, cache_ttl=ttl) == pytest.approx(1.25 + 4.0)
    assert usage_cost(haiku4, usage, batch=True) == pytest.approx((1.25 + 4.0) / 2)


def test_long_prompt_tier_and_batch_discount() -> None:
    haiku5 = REG["claude-haiku-5-5"]  # 0.10/0.50, over 100k: 0.50/2.50
    short = {"input_tokens": 100_000, "output_tokens": 1000}
    long = {"input_tokens": 100_001, "output_tokens": 1000}
    assert usage_cost(haiku5, short) == pytest.approx(0.01 + 0.0005)
    assert usage_cost(haiku5, long) == pytest.approx(100_001 * 0.5e-6 + 0.0025)
    assert usage_cost(haiku5, short, batch=True) == pytest.approx((0.01 + 0.0005) / 2)
