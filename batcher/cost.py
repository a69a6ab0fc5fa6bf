"""What a response cost, from its ``usage`` and the model's prices (USD)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batcher.models import ModelProfile

_PER = 1_000_000


def usage_cost(
    profile: ModelProfile, usage: Mapping[str, Any], *, batch: bool = False, cache_ttl: str = "5m"
) -> float:
    """Dollars for one answer: input, output, cache reads and writes each at its own price.

    The long-prompt tier applies when the whole prompt (input plus cache reads and writes) is
    over its threshold; the Batch API discount applies to everything.
    """
    prices = profile.prices
    fresh = int(usage.get("input_tokens") or 0)
    out = int(usage.get("output_tokens") or 0)
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    in_price, out_price = prices.for_prompt(fresh + read + written)
    scale = in_price / prices.input if prices.input else 1.0
    write_price = prices.cache_write_1h if cache_ttl == "1h" else prices.cache_write_5m
    dollars = (
        fresh * in_price + out * out_price + read * prices.cache_read * scale + written * write_price * scale
    ) / _PER
    return dollars * (prices.batch_discount if batch else 1.0)
