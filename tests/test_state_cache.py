"""results.cache_saved_usd, cache_reads, cache_uses (schema v4): what the prompt cache saved and how
often it was read, kept over every run; a v3 state migrates with every earlier row at 0."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from batcher.cost import cache_saving, usage_cost
from batcher.models import load_registry
from batcher.records import Result, Row
from batcher.state import JobState
from batcher.state.connection import SCHEMA_VERSION, STATE_FILE


def _answer(row_id: str, read: int, written: int, saved: float) -> Result:
    return Result(
        id=row_id,
        status="ok",
        attempts=1,
        input_tokens=100,
        output_tokens=10,
        cache_read_input_tokens=read,
        cache_creation_input_tokens=written,
        cost_usd=0.001,
        cache_saved_usd=saved,
    )


def test_the_summary_adds_up_hits_uses_and_savings(tmp_path: Path) -> None:
    with JobState.open(tmp_path) as state:
        state.sync_rows([Row(id=i, images=[], prompt="p", fields={}, index=n) for n, i in enumerate("abcd")])
        state.record(_answer("a", 0, 2000, -0.0005))
        state.record(_answer("b", 2000, 0, 0.0018))
        state.record(_answer("c", 2000, 0, 0.0018))
        state.record(_answer("d", 0, 0, 0.0))
        s = state.summary()
        assert (s.cache_reads, s.cache_uses) == (2, 3)
        assert s.cache_hit_rate == pytest.approx(2 / 3)
        assert s.cache_saved_usd == pytest.approx(0.0031)
        assert (s.cache_read_input_tokens, s.cache_creation_input_tokens) == (4000, 2000)


def test_a_v3_state_migrates_to_v4(tmp_path: Path) -> None:
    with JobState.open(tmp_path) as state:
        state.sync_rows([Row(id="a", images=[], prompt="p", fields={}, index=0)])
        state.record(_answer("a", 0, 0, 0.0))
    conn = sqlite3.connect(tmp_path / STATE_FILE)
    for column in ("cache_saved_usd", "cache_reads", "cache_uses"):
        conn.execute(f"ALTER TABLE results DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with JobState.open(tmp_path) as state:
        assert state._query("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 4
        assert state.summary().cache_uses == 0 and state.summary().cache_hit_rate is None
        state.record(_answer("a", 2000, 0, 0.001))
        assert state.summary().cache_reads == 1


def test_cache_saving_is_exact_for_reads_5m_and_1h_writes_and_the_batch_discount() -> None:
    haiku = load_registry().get("claude-haiku-5-5")
    p = haiku.prices
    read = {"input_tokens": 100, "output_tokens": 10, "cache_read_input_tokens": 2000}
    assert cache_saving(haiku, read) == pytest.approx(2000 * (p.input - p.cache_read) / 1e6)
    w1h = {
        "input_tokens": 100,
        "output_tokens": 10,
        "cache_creation_input_tokens": 2000,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2000},
    }
    assert cache_saving(haiku, w1h, batch=True) == pytest.approx(
        2000 * (p.input - p.cache_write_1h) / 1e6 * p.batch_discount
    )
    plain = {"input_tokens": 2100, "output_tokens": 10}
    assert cache_saving(haiku, w1h) == pytest.approx(usage_cost(haiku, plain) - usage_cost(haiku, w1h))
    assert cache_saving(haiku, plain) == 0.0
