"""Issue 13: a row in a live Message Batch is never sent by anyone, whatever the job's mode.

Every run first collects the batches that have ended, leaves the rows of live batches to them,
says so in one line and exits 75 while any remain; each row is billed exactly once. A batched row
becomes sendable again only when its batch is done with it, each way tested here.
"""

from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path

import pytest

from batcher.batches import COLLECTED, DONE_STATUSES, LOST
from batcher.commands.batches import batches_command
from batcher.exits import EXIT_BUDGET, EXIT_INCOMPLETE, EXIT_OK, EXIT_ROW_ERRORS
from batcher.pipeline import Counters
from batcher.progress import BatchProgress, batch_status_line
from batcher.records import Result, Row
from batcher.simulator.config import BatchClock, SimConfig
from batcher.state import JobState
from tests.helpers import messages_sent, results_by_id, run_job
from tests.test_batches import (
    batches_created,
    frozen,
    interrupt_while_waiting,
    release,
    write_job,
)


def charges(sim) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return sim.sim.ledger.snapshot()["charges_by_nonce"]


def once_each(n: int) -> dict[str, int]:
    return {f"row-{i:02d}": 1 for i in range(n)}


def to_mode(job: Path, mode: str) -> None:
    """Switch the same job file (same output folder) to another mode."""
    text = job.read_text()
    job.write_text(
        text.replace('mode = "batch"', f'mode = "{mode}"').replace('mode = "online"', f'mode = "{mode}"')
    )


def statuses(out: Path) -> dict[str, int]:
    with JobState.open(out) as state:
        return state.summary().by_status


def submit_and_leave(tmp_path: Path, sim, monkeypatch, n: int) -> Path:  # type: ignore[no-untyped-def]
    """A batch-mode job with ``wait = false``: its rows go into one batch and the run exits 75."""
    job = write_job(tmp_path, n, extra="wait = false")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE, err
    assert batches_created(sim) == 1 and statuses(tmp_path / "out") == {"batched": n}
    return job


# --- the scenario ----------------------------------------------------------------------------


def test_an_online_run_never_sends_rows_in_a_live_batch(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.5)))
    frozen(sim)
    job = write_job(tmp_path, 6, extra="wait = false")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE, err
    assert batches_created(sim) == 1
    assert statuses(tmp_path / "out") == {"batched": 6}
    # Progress in batch mode counts rows put into batches, not a request rate.
    assert "submitted 6 rows in 1 batch" in err and "req/s" not in err, err
    assert "6 rows are in 1 live batch" in err, err

    # The same job switched to online while its batch runs: nothing of it is sent.
    to_mode(job, "online")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE, err
    assert messages_sent(sim) == 0, "rows in a live batch were sent online"
    assert "6 rows are in 1 live batch" in err and f"batcher batches {tmp_path / 'out'}" in err, err
    assert len([line for line in err.splitlines() if "live batch" in line]) == 1, err

    # Two rows join the manifest: the online run sends those (and only those), still exits 75.
    online = write_job(tmp_path, 8, mode="online")
    code, err = run_job(online, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE, err
    assert messages_sent(sim) == 2 and charges(sim) == {"row-06": 1, "row-07": 1}
    assert statuses(tmp_path / "out") == {"batched": 6, "ok": 2}

    # The batch ends; an online run collects it: one answer a row, each billed once, exit 0.
    release(sim)
    code, err = run_job(online, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert "collected 6 rows from 1 ended batch" in err, err
    assert messages_sent(sim) == 2
    got = results_by_id(tmp_path / "out")
    assert len(got) == 8 and {r["status"] for r in got.values()} == {"ok"}
    assert {k for k, r in got.items() if r["mode"] == "batch"} == {f"row-{i:02d}" for i in range(6)}
    assert charges(sim) == once_each(8)
    with JobState.open(tmp_path / "out") as state:
        assert {b.status for b in state.list_batches()} == {COLLECTED}
    # And a batch-mode run afterwards has nothing to do.
    code, err = run_job(job.with_name("batch.toml"), sim, monkeypatch)
    assert code == EXIT_OK and batches_created(sim) == 1 and charges(sim) == once_each(8), err


@pytest.mark.parametrize("mode", ["batch", "online"])
def test_the_next_run_of_either_mode_collects_an_ended_batch(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
    mode: str,
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.5)))
    frozen(sim)
    job = submit_and_leave(tmp_path, sim, monkeypatch, 4)
    release(sim)
    to_mode(job, mode)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert batches_created(sim) == 1 and messages_sent(sim) == 0
    assert {r["mode"] for r in results_by_id(tmp_path / "out").values()} == {"batch"}
    assert charges(sim) == once_each(4)


# --- every way a batched row becomes sendable again -------------------------------------------------


def test_a_row_the_ended_batch_has_no_result_for_is_sent_again(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    # One of four requests expires (not billed); the results file then leaves its line out.
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.5, expire_share=0.25)))
    frozen(sim)
    job = submit_and_leave(tmp_path, sim, monkeypatch, 4)
    [batch] = sim.sim.batches.all()
    full = batch.result_lines

    def without_expired() -> bytes:
        lines = [line for line in full().splitlines() if b'"expired"' not in line]
        return b"\n".join(lines) + b"\n"

    batch.result_lines = without_expired  # type: ignore[method-assign]
    release(sim)
    to_mode(job, "online")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert messages_sent(sim) == 1, "only the row without a result goes online"
    got = results_by_id(tmp_path / "out")
    assert len(got) == 4 and {r["status"] for r in got.values()} == {"ok"}
    assert sorted(r["mode"] for r in got.values()) == ["batch", "batch", "batch", "online"]
    [again] = [r for r in got.values() if r["mode"] == "online"]
    assert again["attempts"] == 2, "its batch submission counts as an attempt"
    assert charges(sim) == once_each(4)


def test_the_rows_of_a_batch_gone_from_the_api_are_sent_again(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.5)))
    frozen(sim)
    job = submit_and_leave(tmp_path, sim, monkeypatch, 3)
    [batch] = sim.sim.batches.all()
    sim.sim.batches.remove(batch.id)  # the API answers 404 for it from now on
    to_mode(job, "online")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert f"batch {batch.id} is gone from the API; its 3 unanswered rows will be sent again" in err
    assert messages_sent(sim) == 3 and charges(sim) == once_each(3)
    with JobState.open(tmp_path / "out") as state:
        assert [b.status for b in state.list_batches()] == [LOST]


@pytest.mark.parametrize("how", ["batches --cancel", "Ctrl-C"])
def test_a_cancelled_batch_holds_its_rows_until_it_ends(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
    how: str,
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=1.0)))
    now = frozen(sim)
    if how == "Ctrl-C":
        job = write_job(tmp_path, 6)  # waits for its batch; SIGINT cancels it
        err = interrupt_while_waiting(job, sim, now)
        assert "cancelled batch" in err, err
        assert "6 rows are in 1 live batch" in err, err
    else:
        job = submit_and_leave(tmp_path, sim, monkeypatch, 6)
        now[0] = 0.5
        monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.base_url)
        err_stream = io.StringIO()
        assert (
            batches_command(
                tmp_path / "out", as_json=False, cancel=True, err=err_stream, stdout=io.StringIO()
            )
            == 0
        )
        assert "1 batch(es) cancelled" in err_stream.getvalue()
    [batch] = sim.sim.batches.all()
    assert batch.cancel_at_s is not None and not batch.ended

    # Cancelling, not ended: the batch may still answer, so an online run sends none of it.
    to_mode(job, "online")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE, err
    assert messages_sent(sim) == 0 and "6 rows are in 1 live batch" in err, err

    # Ended: what it answered is collected, the canceled rows go online; each billed once.
    now[0] = 0.7
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    got = results_by_id(tmp_path / "out")
    assert sorted(r["mode"] for r in got.values()) == ["batch"] * 3 + ["online"] * 3
    assert messages_sent(sim) == 3 and charges(sim) == once_each(6)


def test_retry_errors_does_not_send_an_error_row_that_is_in_a_live_batch(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.2)))
    job = write_job(tmp_path, 1, bad=True, model="claude-haiku-4-5", extra="wait = false")
    job.write_text(job.read_text().replace("wait = false", "wait = true"))
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_ROW_ERRORS, err
    assert results_by_id(tmp_path / "out")["too-long"]["error_type"] == "invalid_request_error"
    # Retried in a batch that does not end yet: the row is in it.
    frozen(sim)
    job.write_text(job.read_text().replace("wait = true", "wait = false"))
    code, err = run_job(job, sim, monkeypatch, retry_errors=True)
    assert code == EXIT_INCOMPLETE and batches_created(sim) == 2, err
    with JobState.open(tmp_path / "out") as state:
        assert state.status_of("too-long") == "batched"
    # Online --retry-errors retries the other error rows (local ones: no request) but not that one.
    to_mode(job, "online")
    code, err = run_job(job, sim, monkeypatch, retry_errors=True)
    assert code == EXIT_INCOMPLETE, err
    assert messages_sent(sim) == 0 and "1 row is in 1 live batch" in err, err
    release(sim)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_ROW_ERRORS, err
    assert messages_sent(sim) == 0
    too_long = results_by_id(tmp_path / "out")["too-long"]
    assert too_long["mode"] == "batch" and too_long["attempts"] == 2


@pytest.mark.parametrize("old_status", ["inflight", None])
def test_rows_of_a_live_batch_not_marked_batched_are_adopted(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
    old_status: str | None,
) -> None:
    """A state from before issue 13 (submitted rows ``inflight``), or a crash between recording the
    batch and marking its rows (no status): the rows are in a live batch all the same."""
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.5)))
    frozen(sim)
    job = submit_and_leave(tmp_path, sim, monkeypatch, 5)
    with sqlite3.connect(tmp_path / "out" / "state.sqlite") as db:
        if old_status is None:
            db.execute("DELETE FROM results")
        else:
            db.execute("UPDATE results SET status = ?", (old_status,))
    to_mode(job, "online")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE, err
    assert messages_sent(sim) == 0 and statuses(tmp_path / "out") == {"batched": 5}
    release(sim)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert messages_sent(sim) == 0 and charges(sim) == once_each(5)


def test_a_batch_collected_before_a_crash_is_collected_again_without_changing_a_row(
    tmp_path: Path, make_simulator, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Results recorded, then the process died before the batch was marked collected: the next
    run adopts its rows again and collects it again; each row keeps its one outcome and cost."""
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.2)))
    job = write_job(tmp_path, 2, bad=True, model="claude-haiku-4-5")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_ROW_ERRORS, err
    with JobState.open(tmp_path / "out") as state:
        before = (state.summary().by_status, state.summary().cost_usd)
    with sqlite3.connect(tmp_path / "out" / "state.sqlite") as db:
        db.execute("UPDATE batches SET status = 'ended'")
    for mode in ("batch", "online"):
        to_mode(job, mode)
        code, err = run_job(job, sim, monkeypatch)
        assert code == EXIT_ROW_ERRORS, err
        with JobState.open(tmp_path / "out") as state:
            assert (state.summary().by_status, state.summary().cost_usd) == before
            assert state.status_of("too-long") == "error"
        with sqlite3.connect(tmp_path / "out" / "state.sqlite") as db:
            db.execute("UPDATE batches SET status = 'ended'")
    assert batches_created(sim) == 1 and messages_sent(sim) == 0
    assert results_by_id(tmp_path / "out")["too-long"]["attempts"] == 1


def test_an_online_run_counts_what_live_batches_hold_against_the_budget(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.5)))
    frozen(sim)
    # ~$0.0000137 worst case a row at the batch price, twice that online: 4 rows fit in batches,
    # and what is left after their holds is less than one row online.
    job = write_job(tmp_path, 10, extra="wait = false\n[limits]\nbudget_usd = 0.00006")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_BUDGET, err
    with JobState.open(tmp_path / "out") as state:
        [batch] = state.list_batches()
        assert 0 < batch.request_count < 10
    to_mode(job, "online")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_BUDGET, err
    assert messages_sent(sim) == 0, "the budget the live batch holds was spent again online"


# --- the state's part, without sockets ----------------------------------------------------------------


def _rows(ids: str) -> list[Row]:
    return [Row(id=i, images=[f"{i}.jpg"], prompt="p", fields={}, index=n) for n, i in enumerate(ids)]


@pytest.fixture
def state(tmp_path: Path):  # type: ignore[no-untyped-def]
    with JobState.open(tmp_path / "out") as st:
        st.sync_rows(_rows("abcdef"))
        yield st


def test_the_state_and_the_batch_driver_agree_on_which_batches_are_done() -> None:
    assert {COLLECTED, LOST} == DONE_STATUSES


def test_adopt_marks_the_rows_of_live_batches_only(state: JobState) -> None:
    state.put_batch("live", [state.custom_id(i) for i in "abcd"])
    state.put_batch("old", [state.custom_id("e")], status=COLLECTED)
    state.mark_inflight(["a"])
    state.record(Result(id="b", status="ok", text="x", attempts=1))
    state.record(Result(id="c", status="error", error_type="api_error", attempts=1))
    assert state.adopt_batched() == 3  # a (inflight), c (error), d (never recorded)
    assert {i: state.status_of(i) for i in "abcdef"} == {
        "a": "batched",
        "b": "done",
        "c": "batched",
        "d": "batched",
        "e": None,
        "f": None,
    }
    assert state.adopt_batched() == 0
    assert list(state.remaining(retry_errors=True)) == ["e", "f"]


def test_release_frees_what_the_batch_left_unless_another_live_batch_holds_it(state: JobState) -> None:
    state.put_batch("one", [state.custom_id(i) for i in "abc"], status="ended")
    state.put_batch("two", [state.custom_id("c")])
    state.mark_batched(["a", "b", "c"])
    state.record(Result(id="a", status="ok", text="x", attempts=1))
    assert state.release_batched("one", "batch_no_result", "no line") == 1
    assert {i: state.status_of(i) for i in "abc"} == {"a": "done", "b": "transient", "c": "batched"}
    assert state.prior_attempts("b") == 1


def test_unbatch_gives_a_recorded_row_its_status_back(state: JobState) -> None:
    state.record(Result(id="a", status="error", error_type="invalid_request_error", attempts=1))
    state.mark_batched(["a"])
    state.record(Result(id="b", status="ok", text="x", attempts=1))
    state.unbatch("a", "error")
    state.unbatch("b", "error")  # not batched: left as it is
    assert (state.status_of("a"), state.status_of("b")) == ("error", "done")


def test_batch_progress_shows_batches_not_a_request_rate() -> None:
    counters = Counters(ok=2, requests=500)
    counters.started = time.monotonic() - 1
    line = batch_status_line(
        counters,
        10,
        BatchProgress(
            submitted_rows=500,
            submitted_batches=1,
            collected_rows=2,
            collected_batches=1,
            live_batches=1,
            live_rows=498,
        ),
    )
    assert "req/s" not in line and "ETA" not in line and "in flight" not in line
    assert "submitted 500 rows in 1 batch | collected 2 rows from 1 batch | live 1 batch (498 rows)" in line
    assert "left 8" in line
    assert "\n" not in line
