"""Issue 13: a row in a live Message Batch is never sent by anyone, whatever the job's mode.

Every run first collects the batches that have ended, leaves the rows of live batches to them,
says so in one line and exits 75 while any remain; each row is billed exactly once.
"""

from __future__ import annotations

from pathlib import Path

from batcher.runner import EXIT_INCOMPLETE, EXIT_OK
from batcher.simulator.config import BatchClock, SimConfig
from batcher.state import JobState
from tests.test_batches import batches_created, release, results, run_in_process, write_job


def frozen(sim) -> list[float]:  # type: ignore[no-untyped-def]
    """Freeze the simulator's batch clock at 0: no batch ends until the test moves it."""
    now = [0.0]
    sim.sim.batches.clock = lambda: now[0]
    return now


def online_messages(sim) -> int:  # type: ignore[no-untyped-def]
    return sum(sim.sim.ledger.snapshot()["requests"].get("POST /v1/messages", {}).values())


def charges(sim) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return sim.sim.ledger.snapshot()["charges_by_nonce"]


def to_mode(job: Path, mode: str) -> None:
    text = job.read_text()
    job.write_text(text.replace('mode = "batch"', f'mode = "{mode}"')
                   .replace('mode = "online"', f'mode = "{mode}"'))


def test_an_online_run_never_sends_rows_in_a_live_batch(tmp_path: Path, make_simulator,  # type: ignore[no-untyped-def]
                                                       monkeypatch) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.5)))
    frozen(sim)
    job = write_job(tmp_path, 6, extra="wait = false")
    code, err = run_in_process(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE, err
    assert batches_created(sim) == 1
    with JobState.open(tmp_path / "out") as state:
        assert state.summary().by_status == {"batched": 6}

    # The same job switched to online while its batch is still running: nothing is sent.
    to_mode(job, "online")
    code, err = run_in_process(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE, err
    assert online_messages(sim) == 0, "rows in a live batch were sent online"
    assert "6 rows are in 1 live batch" in err and "batcher batches " in err, err

    # The batch ends; an online run collects it: one answer a row, each billed once, exit 0.
    release(sim)
    code, err = run_in_process(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert online_messages(sim) == 0
    got = results(tmp_path / "out")
    assert len(got) == 6 and {r["status"] for r in got.values()} == {"ok"}
    assert {r["mode"] for r in got.values()} == {"batch"}
    assert charges(sim) == {f"row-{i:02d}": 1 for i in range(6)}
    with JobState.open(tmp_path / "out") as state:
        assert {b.status for b in state.list_batches()} == {"collected"}
