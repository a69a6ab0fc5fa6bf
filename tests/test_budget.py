"""``[limits] budget_usd``: the pure ledger of holds, and a run against the simulator that it stops."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from batcher.budget import Budget
from batcher.cost import usage_cost
from batcher.exits import EXIT_BUDGET, EXIT_OK
from batcher.models import load_registry
from batcher.simulator.config import SimConfig
from tests.helpers import good_rows, results_by_id, run_job, write_job


def test_a_hold_that_does_not_fit_is_refused_and_latches() -> None:
    budget = Budget(limit_usd=1.0, spent_usd=0.25)
    assert budget.reserve(0.5)
    assert not budget.reserve(0.3), "0.25 spent + 0.5 held + 0.3 is over 1.0"
    budget.settle(0.5, 0.1)
    assert budget.spent_usd == pytest.approx(0.35) and budget.reserved_usd == 0
    assert not budget.reserve(0.01), "once refused, the run takes no more rows"


def test_no_limit_only_accounts() -> None:
    budget = Budget(limit_usd=None)
    for _ in range(100):
        assert budget.reserve(10.0)
        budget.settle(10.0, 1.0)
    assert budget.spent_usd == pytest.approx(100.0)


def test_earlier_spend_counts_from_the_start() -> None:
    assert not Budget(limit_usd=1.0, spent_usd=0.99).reserve(0.02)


def _billed(sim) -> float:  # type: ignore[no-untyped-def]
    """What the simulator would bill for everything it answered, at the job's model's prices."""
    led = sim.sim.ledger.snapshot()
    profile = load_registry()["claude-haiku-5-5"]
    return usage_cost(profile, {"input_tokens": led["input_tokens"], "output_tokens": led["output_tokens"]})


def test_the_budget_stops_the_run_with_exit_5_and_spend_within_it(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    sim = make_simulator(SimConfig())
    rows = good_rows(tmp_path, 12)
    job = write_job(tmp_path, rows, concurrency=2)
    # A row here costs at most ~130 input tokens and 60 output tokens: ~$0.000043 on Haiku 5.5.
    budget = 0.0002
    job.write_text(job.read_text() + f"\n[limits]\nbudget_usd = {budget}\n")

    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_BUDGET, err
    assert "stopped by the budget" in err and "of $0.0002" in err
    done = results_by_id(tmp_path / "out")
    assert 0 < len(done) < len(rows)
    assert all(r["status"] == "ok" for r in done.values())
    assert _billed(sim) <= budget
    spent = sum(r["cost_usd"] for r in done.values())
    assert spent == pytest.approx(_billed(sim))

    # Again with the same budget: earlier spend counts, so little or nothing more is sent.
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_BUDGET, err
    assert _billed(sim) <= budget

    # A bigger budget lets the job finish; the state's spend is the whole bill.
    job.write_text(job.read_text().replace(f"budget_usd = {budget}", "budget_usd = 1.0"))
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert len(results_by_id(tmp_path / "out")) == len(rows)
    from batcher.commands.status import show_status

    status = io.StringIO()
    monkeypatch.setattr("sys.stdout", status)
    show_status(tmp_path / "out", as_json=True)
    assert json.loads(status.getvalue())["cost_usd"] == pytest.approx(_billed(sim))


def test_a_budget_already_spent_sends_nothing(tmp_path: Path, make_simulator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sim = make_simulator(SimConfig())
    job = write_job(tmp_path, good_rows(tmp_path, 3))
    job.write_text(job.read_text() + "\n[limits]\nbudget_usd = 0.000001\n")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_BUDGET, err
    assert "POST /v1/messages" not in sim.sim.ledger.snapshot()["requests"]
