"""Structured output in batch mode: the same typed results as online, refusals and cut-off answers
as paid error rows, a mismatch resubmitted (by the wait loop, or by the next run with
``wait = false``) no more than ``retry_invalid`` times, and the re-ask count kept in the state."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from batcher.exits import EXIT_INCOMPLETE, EXIT_OK, EXIT_ROW_ERRORS
from batcher.simulator.config import BatchClock, Faults, SimConfig
from batcher.sink import read_results
from batcher.state import JobState
from tests.helpers import REPO_JOBS, good_rows, requests_sent, results_by_id, run_job, structured_job

BATCH = BatchClock(duration_s=0.1)


def tags_schema(tmp: Path) -> str:
    (tmp / "schemas").mkdir(exist_ok=True)
    shutil.copy(REPO_JOBS / "schemas" / "tags.json", tmp / "schemas" / "tags.json")
    return '"schemas/tags.json"'


def batches_created(sim: Any) -> int:
    return requests_sent(sim, "POST /v1/messages/batches")


def test_batch_mode_gives_the_same_typed_columns(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(batches=BATCH))
    rows = good_rows(tmp_path, 3)
    job = structured_job(tmp_path, rows, tags_schema(tmp_path), mode="batch")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    schema = read_results(tmp_path / "out").schema
    assert schema.field("tags").type == pa.list_(pa.string())
    assert schema.field("counts").type == pa.struct(
        [
            pa.field("people", pa.int64(), nullable=False),
            pa.field("animals", pa.int64(), nullable=False),
            pa.field("vehicles", pa.int64(), nullable=False),
        ]
    )
    assert schema.field("has_text").type == pa.bool_()
    for row in rows:
        got = results_by_id(tmp_path / "out")[row["id"]]
        assert got["status"] == "ok" and got["mode"] == "batch"
        assert f"nonce={row['id']}" in got["caption"]


def test_batch_refusals_and_cut_off_answers_are_paid_error_rows(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(batches=BATCH, faults=Faults(refusal=1.0)))
    rows = good_rows(tmp_path, 2)
    code, err = run_job(structured_job(tmp_path, rows, tags_schema(tmp_path), mode="batch"), sim, monkeypatch)
    assert code == EXIT_ROW_ERRORS, err
    for got in results_by_id(tmp_path / "out").values():
        assert got["error_type"] == "refusal" and got["cost_usd"] > 0
    assert "refusal 2" in err

    cut = tmp_path / "cut"
    cut.mkdir()
    rows = good_rows(cut, 1)
    sim2 = make_simulator(SimConfig(batches=BATCH))
    job = structured_job(cut, rows, tags_schema(cut), mode="batch", max_tokens=12)
    code, err = run_job(job, sim2, monkeypatch)
    assert code == EXIT_ROW_ERRORS, err
    got = results_by_id(cut / "out")[rows[0]["id"]]
    assert got["error_type"] == "max_tokens" and "max_tokens = 12" in got["error_message"]
    assert got["cost_usd"] > 0


def test_a_batch_mismatch_is_resubmitted_and_then_ok(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(batches=BATCH, faults=Faults(mismatch_first=True)))
    rows = good_rows(tmp_path, 2)
    code, err = run_job(structured_job(tmp_path, rows, tags_schema(tmp_path), mode="batch"), sim, monkeypatch)
    assert code == EXIT_OK, err
    assert batches_created(sim) == 2
    spent = sim.sim.ledger.snapshot()
    results = results_by_id(tmp_path / "out")
    for got in results.values():
        assert got["status"] == "ok" and got["attempts"] == 2 and got["caption"]
    # Each row shows both its answers, as online; the job's spend counts each once.
    assert sum(r["output_tokens"] for r in results.values()) == spent["batch_output_tokens"]
    with JobState.open(tmp_path / "out") as state:
        summary = state.summary()
        assert summary.reasks == 2 and all(state.reasks_of(r["id"]) == 1 for r in rows)
        assert summary.output_tokens == spent["batch_output_tokens"]
        assert summary.cost_usd == pytest.approx(sum(r["cost_usd"] for r in results.values()))
    assert "re-asks 2" in err


def test_without_waiting_the_next_run_resubmits_and_the_re_asks_hold_across_runs(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(batches=BATCH, faults=Faults(mismatch=1.0)))
    rows = good_rows(tmp_path, 1)
    job = structured_job(
        tmp_path, rows, tags_schema(tmp_path), mode="batch", retry_invalid=1, run_extra="wait = false"
    )
    # Run 1 submits; later runs collect and resubmit, until the mismatch is final.
    codes = []
    for _ in range(6):
        code, err = run_job(job, sim, monkeypatch)
        codes.append(code)
        if code == EXIT_ROW_ERRORS:
            break
        assert code == EXIT_INCOMPLETE, err

        time.sleep(0.25)  # the batch clock: let the batch end before the next tick collects it
    assert codes[-1] == EXIT_ROW_ERRORS, codes
    assert batches_created(sim) == 2  # 1 + retry_invalid, never more
    got = results_by_id(tmp_path / "out")[rows[0]["id"]]
    assert got["error_type"] == "schema_mismatch" and got["attempts"] == 2
    assert got["output_tokens"] == sim.sim.ledger.snapshot()["batch_output_tokens"]
    with JobState.open(tmp_path / "out") as state:
        assert state.reasks_of(rows[0]["id"]) == 1
        assert state.summary().cost_usd == pytest.approx(got["cost_usd"])
    assert run_job(job, sim, monkeypatch)[0] == EXIT_ROW_ERRORS
    assert batches_created(sim) == 2
