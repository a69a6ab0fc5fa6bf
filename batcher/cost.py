"""What a response cost, from its ``usage`` and the model's prices (USD)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batcher.models import ModelProfile

_PER = 1_000_000


def cache_writes(usage: Mapping[str, Any], cache_ttl: str = "5m") -> tuple[int, int]:
    """(tokens written for 5 minutes, for 1 hour). The API says which in ``usage.cache_creation``;
    an answer without it (an older API, a gateway) is taken as written at ``cache_ttl``."""
    split = usage.get("cache_creation")
    if isinstance(split, Mapping):
        return (
            int(split.get("ephemeral_5m_input_tokens") or 0),
            int(split.get("ephemeral_1h_input_tokens") or 0),
        )
    written = int(usage.get("cache_creation_input_tokens") or 0)
    return (0, written) if cache_ttl == "1h" else (written, 0)


def usage_cost(
    profile: ModelProfile, usage: Mapping[str, Any], *, batch: bool = False, cache_ttl: str = "5m"
) -> float:
    """Dollars for one answer: input, output, cache reads and writes (5-minute and 1-hour apart)
    each at its own price.

    The long-prompt tier applies when the whole prompt (input plus cache reads and writes) is
    over its threshold; the Batch API discount applies to everything.
    """
    prices = profile.prices
    fresh = int(usage.get("input_tokens") or 0)
    out = int(usage.get("output_tokens") or 0)
    read = int(usage.get("cache_read_input_tokens") or 0)
    written_5m, written_1h = cache_writes(usage, cache_ttl)
    in_price, out_price = prices.for_prompt(fresh + read + written_5m + written_1h)
    scale = in_price / prices.input if prices.input else 1.0
    dollars = (
        fresh * in_price
        + out * out_price
        + (read * prices.cache_read + written_5m * prices.cache_write_5m + written_1h * prices.cache_write_1h)
        * scale
    ) / _PER
    return dollars * (prices.batch_discount if batch else 1.0)


def cache_saving(
    profile: ModelProfile, usage: Mapping[str, Any], *, batch: bool = False, cache_ttl: str = "5m"
) -> float:
    """What the prompt cache saved on one answer (USD): what it would have cost with every cached
    token (read or written) as plain input, less what it cost. Negative for an answer that wrote
    the prefix (a write costs more than plain input); 0 without cache activity. Exact as
    :func:`usage_cost` is: 5-minute and 1-hour writes apart, the long-prompt tier and the batch
    discount alike on both sides."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    written_5m, written_1h = cache_writes(usage, cache_ttl)
    if not (read or written_5m or written_1h):
        return 0.0
    plain = {
        "input_tokens": int(usage.get("input_tokens") or 0) + read + written_5m + written_1h,
        "output_tokens": int(usage.get("output_tokens") or 0),
    }
    return usage_cost(profile, plain, batch=batch) - usage_cost(
        profile, usage, batch=batch, cache_ttl=cache_ttl
    )
