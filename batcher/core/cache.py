"""Prompt caching of the prefix every row of a job shares: whether a job's requests carry a
``cache_control`` breakpoint, where, with which TTL, and what that does to a row's worst case.
Pure: no I/O.

The API writes cache entries only at breakpoints, and a top-level ``cache_control`` lands on the
last block, which for batcher is the row's own image: it never hits. So batcher places one explicit
breakpoint on the last block every row shares (the end of the few-shot examples, else of the system
prompt), and only when that prefix reaches the model's minimum cacheable length (below it the API
caches nothing, silently, and the write-first ordering would only slow the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Ttl = Literal["5m", "1h"]
#: where the breakpoint sits: the last example's last block, or the system prompt's end
Anchor = Literal["examples", "system"]


@dataclass(frozen=True, slots=True)
class CachePoint:
    """The one breakpoint every request of a job carries."""

    ttl: Ttl
    anchor: Anchor
    #: estimated input tokens of the prefix up to and including the breakpoint (tools, system,
    #: examples): what a request reads from the cache once it is written
    prefix_tokens: int


@dataclass(frozen=True, slots=True)
class CacheDecision:
    """A job's caching, decided once a run: the breakpoint (None: no breakpoint) and why, in one
    line for the run's notices and ``batcher estimate``."""

    point: CachePoint | None
    reason: str


def resolve_ttl(setting: Literal["auto", "5m", "1h"], *, batch: bool) -> Ttl:
    """``[cache] ttl``: "auto" is 5 minutes online (rows follow each other within seconds, and a
    read refreshes the entry) and 1 hour in batch mode (a batch may run for an hour or more, and
    the docs recommend the 1-hour TTL for batches)."""
    if setting == "auto":
        return "1h" if batch else "5m"
    return setting


def decide_cache(
    mode: Literal["auto", "off"],
    ttl: Ttl,
    *,
    model: str,
    prefix_tokens: int,
    min_tokens: int | None,
    has_examples: bool,
    has_system: bool,
) -> CacheDecision:
    """Where the breakpoint goes, if anywhere (see the module doc). ``min_tokens`` None: the
    model's minimum cacheable length is not known (a profile without it): the breakpoint is placed,
    since one under the minimum costs nothing, and the reason says so."""
    if mode == "off":
        return CacheDecision(None, "cache: off ([cache] mode)")
    if not has_examples and not has_system:
        return CacheDecision(None, "cache: nothing shared by every row (no system prompt, no examples)")
    anchor: Anchor = "examples" if has_examples else "system"
    where = "the examples" if has_examples else "the system prompt"
    if min_tokens is None:
        return CacheDecision(
            CachePoint(ttl, anchor, prefix_tokens),
            f"cache: breakpoint at the end of {where} (~{prefix_tokens:,} tokens, TTL {ttl}); "
            f"{model}'s minimum cacheable length is unknown: if the prefix is under it, nothing is "
            "cached (batcher status shows the hit rate)",
        )
    if prefix_tokens < min_tokens:
        return CacheDecision(
            None,
            f"cache: none: the prefix every row shares is ~{prefix_tokens:,} tokens, under "
            f"{model}'s minimum of {min_tokens:,} (nothing would be cached)",
        )
    return CacheDecision(
        CachePoint(ttl, anchor, prefix_tokens),
        f"cache: breakpoint at the end of {where} (~{prefix_tokens:,} tokens, TTL {ttl})",
    )


def cache_control(ttl: Ttl) -> dict[str, str]:
    """The block key that marks a breakpoint (the one place that knows its wire shape)."""
    return {"type": "ephemeral", "ttl": ttl}
