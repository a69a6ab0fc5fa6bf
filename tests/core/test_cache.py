"""Where the one cache breakpoint goes, and with which TTL (pure decisions)."""

from __future__ import annotations

import pytest

from batcher.core.cache import CachePoint, cache_control, decide_cache, resolve_ttl


def test_auto_ttl_is_5m_online_and_1h_in_batch_mode_and_a_set_one_stands() -> None:
    assert resolve_ttl("auto", batch=False) == "5m"
    assert resolve_ttl("auto", batch=True) == "1h"
    assert resolve_ttl("5m", batch=True) == "5m"
    assert resolve_ttl("1h", batch=False) == "1h"


def _decide(**kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "model": "claude-haiku-5-5",
        "prefix_tokens": 3000,
        "min_tokens": 512,
        "has_examples": True,
        "has_system": True,
    }
    args.update(kw)
    return decide_cache(args.pop("mode", "auto"), args.pop("ttl", "5m"), **args)  # type: ignore[arg-type]


def test_the_breakpoint_ends_the_examples_else_the_system_prompt() -> None:
    assert _decide().point == CachePoint("5m", "examples", 3000)
    assert _decide(has_examples=False).point == CachePoint("5m", "system", 3000)
    assert _decide(ttl="1h").point == CachePoint("1h", "examples", 3000)


@pytest.mark.parametrize(
    ("kw", "said"),
    [
        ({"mode": "off"}, "off"),
        ({"has_examples": False, "has_system": False}, "nothing shared"),
        ({"prefix_tokens": 511}, "under claude-haiku-5-5's minimum of 512"),
    ],
)
def test_no_breakpoint_when_off_nothing_is_shared_or_the_prefix_is_too_short(
    kw: dict[str, object], said: str
) -> None:
    decision = _decide(**kw)
    assert decision.point is None and said in decision.reason


def test_an_unknown_minimum_places_the_breakpoint_and_says_so() -> None:
    decision = _decide(min_tokens=None, prefix_tokens=10)
    assert decision.point == CachePoint("5m", "examples", 10)
    assert "minimum cacheable length is unknown" in decision.reason


def test_the_breakpoint_block_key() -> None:
    assert cache_control("1h") == {"type": "ephemeral", "ttl": "1h"}
