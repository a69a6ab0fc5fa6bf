"""The rows' ``cost_usd`` equals what the simulator charged (issue 16), online and in batch mode,
with cache reads and 5-minute and 1-hour writes: the simulator's ledger (tokens by kind, and their
batch parts) priced with this test's own table of the published prices, not batcher's cost.py."""

from __future__ import annotations

from typing import Any

import pytest

from batcher.exits import EXIT_OK
from batcher.simulator.config import BatchClock, SimConfig
from batcher.state import JobState
from tests.helpers import cached_job, good_rows, run_job

#: claude-haiku-5-5, USD per million tokens (NOTES.md "Models"; "Prompt caching": reads 0.1x the
#: input price, 5-minute writes 1.25x, 1-hour writes 2x; Message Batches 50%).
INPUT, OUTPUT = 0.10, 0.50
READ, WRITE_5M, WRITE_1H = 0.1 * INPUT, 1.25 * INPUT, 2.0 * INPUT
BATCH = 0.5


def charged(ledger: dict[str, Any]) -> float:
    """What the simulator billed: each kind of token at its price, the batch parts at half."""

    def priced(prefix: str) -> float:
        return (
            ledger[f"{prefix}uncached_input_tokens"] * INPUT
            + ledger[f"{prefix}cache_read_tokens"] * READ
            + ledger[f"{prefix}cache_write_5m_tokens"] * WRITE_5M
            + ledger[f"{prefix}cache_write_1h_tokens"] * WRITE_1H
            + ledger[f"{prefix}output_tokens"] * OUTPUT
        ) / 1e6

    everything, batch = priced(""), priced("batch_")
    return everything - batch + batch * BATCH


def _ledger(sim: Any) -> dict[str, Any]:
    ledger: dict[str, Any] = sim.sim.ledger.snapshot()
    if "cache_read_tokens" not in ledger:
        pytest.skip("the simulator's ledger does not count cache tokens by kind yet (helper sim)")
    return ledger


def _costs(out: Any) -> tuple[float, int, int]:
    with JobState.open(out) as state:
        s = state.summary()
    return s.cost_usd, s.cache_read_input_tokens, s.cache_creation_input_tokens


@pytest.mark.parametrize("ttl", ["5m", "1h"])
def test_online_costs_equal_what_the_simulator_charged(
    ttl: str, tmp_path: Any, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig())
    job = cached_job(tmp_path, good_rows(tmp_path, 12), concurrency=4, extra=f'[cache]\nttl = "{ttl}"\n')
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    ledger = _ledger(sim)
    cost, read, written = _costs(tmp_path / "out")
    assert read > 0 and written > 0
    assert ledger[f"cache_write_{ttl}_tokens"] == written and ledger["cache_read_tokens"] == read
    assert cost == pytest.approx(charged(ledger), rel=1e-9)


def test_batch_costs_equal_what_the_simulator_charged(
    tmp_path: Any, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.3)))
    job = cached_job(tmp_path, good_rows(tmp_path, 10), mode="batch")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    ledger = _ledger(sim)
    cost, read, written = _costs(tmp_path / "out")
    assert written > 0 and ledger["batch_cache_write_1h_tokens"] == written
    assert ledger["batch_input_tokens"] == ledger["input_tokens"]  # all of it through batches
    assert ledger["batch_cache_read_tokens"] == read
    assert cost == pytest.approx(charged(ledger), rel=1e-9)
