"""results.reasks (schema v3): the re-asks a structured-output row had, kept over every run; a v2
state migrates with every earlier row at 0."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from batcher.records import Result, Row
from batcher.state import JobState
from batcher.state.connection import SCHEMA_VERSION, STATE_FILE


def _rows(state: JobState, ids: str) -> None:
    state.sync_rows([Row(id=i, images=[], prompt="p", fields={}, index=n) for n, i in enumerate(ids)])


def _mismatch(row_id: str, cost: float) -> Result:
    return Result(
        id=row_id,
        status="error",
        error_type="schema_mismatch",
        error_message="count: -1 is less than the minimum of 0",
        attempts=1,
        input_tokens=10,
        output_tokens=5,
        cost_usd=cost,
    )


def test_a_mismatch_to_re_ask_is_transient_paid_and_counted(tmp_path: Path) -> None:
    with JobState.open(tmp_path) as state:
        _rows(state, "ab")
        state.record(_mismatch("a", 0.01), final=False, reasks=1)
        assert state.status_of("a") == "transient" and state.reasks_of("a") == 1
        assert state.summary().cost_usd == 0.01 and state.summary().reasks == 1
        state.record(Result(id="a", status="ok", attempts=1, cost_usd=0.02, input_tokens=10))
        assert state.status_of("a") == "done" and state.reasks_of("a") == 1
        summary = state.summary()
        assert abs(summary.cost_usd - 0.03) < 1e-12 and summary.reasks == 1
        assert state.reasks_of("b") == 0 and state.reasks_of("nope") == 0


def test_a_v2_state_migrates_to_v3_with_no_re_asks(tmp_path: Path) -> None:
    with JobState.open(tmp_path) as state:
        _rows(state, "a")
        state.record(_mismatch("a", 0.01))
    conn = sqlite3.connect(tmp_path / STATE_FILE)
    # A v2 state has neither reasks nor the cache columns of v4.
    for column in ("reasks", "cache_saved_usd", "cache_reads", "cache_uses"):
        conn.execute(f"ALTER TABLE results DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with JobState.open(tmp_path) as state:
        assert state._query("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 4
        assert state.reasks_of("a") == 0 and state.status_of("a") == "error"
        state.record(_mismatch("a", 0.01), final=False, reasks=1)
        assert state.reasks_of("a") == 1


def test_spend_adds_one_answer_while_the_row_shows_them_all(tmp_path: Path) -> None:
    with JobState.open(tmp_path) as state:
        _rows(state, "a")
        first = _mismatch("a", 0.01)
        state.record(first, final=False, reasks=1)
        second = Result(id="a", status="ok", attempts=1, input_tokens=10, output_tokens=5, cost_usd=0.01)
        shown = Result(id="a", status="ok", attempts=1, input_tokens=20, output_tokens=10, cost_usd=0.02)
        state.record(shown, spend=second)
        got = state.get_result("a")
        assert got is not None and got.cost_usd == 0.02 and got.attempts == 2
        summary = state.summary()
        assert abs(summary.cost_usd - 0.02) < 1e-12 and summary.output_tokens == 10
