"""``[limits] budget_usd`` with a cached prefix (issue 16): the hold is the plan's worst case, the
settle each answer's exact cost (reads at the read price, the write at the write price), so the
budget's spent equals the rows' ``cost_usd`` and it stops before overspending."""

from __future__ import annotations

from typing import Any

import pytest

from batcher.budget import Budget
from batcher.exits import EXIT_BUDGET, EXIT_OK
from batcher.simulator.config import SimConfig
from batcher.state import JobState
from tests.helpers import cached_job, good_rows, run_job


def _spent(monkeypatch: pytest.MonkeyPatch) -> list[Budget]:
    """Every Budget a run settles against."""
    seen: list[Budget] = []
    settle = Budget.settle

    def recording(self: Budget, reserved_usd: float, actual_usd: float) -> None:
        if self not in seen:
            seen.append(self)
        settle(self, reserved_usd, actual_usd)

    monkeypatch.setattr(Budget, "settle", recording)
    return seen


def test_the_budget_spends_exactly_the_rows_cost_with_cache_reads_and_the_write(
    tmp_path: Any, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig())
    budgets = _spent(monkeypatch)
    job = cached_job(tmp_path, good_rows(tmp_path, 10), concurrency=4, extra="[limits]\nbudget_usd = 1.0\n")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    with JobState.open(tmp_path / "out") as state:
        s = state.summary()
    assert s.cache_reads == 9 and s.cache_creation_input_tokens > 0
    assert len(budgets) == 1
    assert budgets[0].spent_usd == pytest.approx(s.cost_usd, rel=1e-12)
    assert budgets[0].reserved_usd == pytest.approx(0.0, abs=1e-15)


def test_a_budget_stops_a_cached_job_before_it_overspends(
    tmp_path: Any, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig())
    # ~1,800 tokens of shared prefix on Haiku 5.5 ($0.10/M): a row's worst case holds it padded
    # and priced as a 1h write (2x), ~$0.0005; a read costs ~$0.00004. The budget takes the write
    # and a few reads, then stops.
    budget = 0.0010
    limits = f"[limits]\nbudget_usd = {budget}\n"
    cache = '[cache]\nttl = "1h"\n'  # 1-hour writes: 2x the input price
    job = cached_job(tmp_path, good_rows(tmp_path, 30), concurrency=2, extra=limits + cache)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_BUDGET, err
    with JobState.open(tmp_path / "out") as state:
        s = state.summary()
    assert 0 < s.cost_usd <= budget
    assert s.cache_creation_input_tokens > 0 and s.cache_reads > 0
