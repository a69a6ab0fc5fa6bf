"""Job state: the resume rule, the single-runner lock, row sync, durable outcomes, CRUD, summary."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from batcher.records import Result, Row, custom_id_for
from batcher.state import (
    STATUSES,
    AlreadyRunning,
    FileRecord,
    JobState,
    StateError,
    acquire_lock,
    needs_work,
    status_for,
)


def _rows(ids: list[str], start: int = 0) -> list[Row]:
    return [Row(id=i, images=[f"{i}.jpg"], prompt="p", fields={}, index=start + n) for n, i in enumerate(ids)]


def _ok(row_id: str, **kw) -> Result:  # type: ignore[no-untyped-def]
    return Result(id=row_id, status="ok", text=f"answer {row_id}", attempts=1, **kw)


def _err(row_id: str, error_type: str = "invalid_request_error") -> Result:
    return Result(id=row_id, status="error", error_type=error_type, error_message="bad", attempts=1)


@pytest.fixture
def state(tmp_path: Path):  # type: ignore[no-untyped-def]
    with JobState.open(tmp_path / "out") as st:
        yield st


# --- pure decisions ---------------------------------------------------------------------------------


#: The resume rule, written out: (status, --retry-errors) -> must the row be sent?
RESUME_RULE = [
    (None, False, True),
    (None, True, True),
    ("transient", False, True),
    ("transient", True, True),
    ("inflight", False, True),
    ("inflight", True, True),
    ("done", False, False),
    ("done", True, False),
    ("batched", False, False),
    ("batched", True, False),
    ("error", False, False),
    ("error", True, True),
]


def test_the_rule_table_covers_every_status() -> None:
    # A status added to the state without a decision here fails this test.
    assert {(s, r) for s, r, _ in RESUME_RULE} == {(s, r) for s in (None, *STATUSES) for r in (False, True)}


@pytest.mark.parametrize(("status", "retry", "expected"), RESUME_RULE)
def test_needs_work(status: str | None, retry: bool, expected: bool) -> None:
    assert needs_work(status, retry) is expected


def test_needs_work_rejects_unknown_status() -> None:
    with pytest.raises(ValueError, match="unknown row status"):
        needs_work("maybe", False)


def _put_in_status(state: JobState, row_id: str, status: str | None) -> None:
    """Bring a synced row to ``status`` the way the stages do."""
    if status == "done":
        state.record(_ok(row_id))
    elif status == "error":
        state.record(_err(row_id))
    elif status == "transient":
        state.record_transient(row_id, "overloaded_error", "529", attempts=1)
    elif status == "inflight":
        state.mark_inflight([row_id])
    elif status == "batched":
        state.mark_batched([row_id])
    assert state.status_of(row_id) == status


@pytest.mark.parametrize(("status", "retry", "expected"), RESUME_RULE)
def test_the_sql_applies_the_same_rule(
    state: JobState, status: str | None, retry: bool, expected: bool
) -> None:
    # remaining() and count_remaining() run the rule in SQL; a row in each status must come out of
    # them exactly as the table says, beside a row that always needs work.
    state.sync_rows(_rows(["row", "new"]))
    _put_in_status(state, "row", status)
    assert list(state.remaining(retry)) == (["row", "new"] if expected else ["new"])
    assert state.count_remaining(retry) == (2 if expected else 1)


def test_status_for() -> None:
    assert status_for(_ok("a"), final=False) == "done"
    assert status_for(_err("a"), final=True) == "error"
    assert status_for(_err("a"), final=False) == "transient"


# --- the lock ---------------------------------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import sys, time
    from batcher.state import acquire_lock
    lock = acquire_lock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(60)
""")


def test_lock_refuses_second_runner_and_frees_on_sigkill(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(AlreadyRunning, match=rf"pid {holder.pid}\)") as info:
            acquire_lock(out)
        assert info.value.pid == holder.pid
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        with acquire_lock(out) as lock:
            assert lock.held
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_lock_released_and_retaken_in_process(tmp_path: Path) -> None:
    with JobState.open(tmp_path / "out") as st:
        st.lock()
        with pytest.raises(AlreadyRunning):
            acquire_lock(tmp_path / "out")
    with acquire_lock(tmp_path / "out"):
        pass


# --- rows and remaining -------------------------------------------------------------------------------


def test_sync_record_and_remaining(state: JobState) -> None:
    report = state.sync_rows(_rows(["a", "b", "c", "d", "e"]))
    assert (report.rows, report.new_rows, report.duplicate_count, report.removed) == (5, 5, 0, 0)
    assert list(state.remaining(False)) == ["a", "b", "c", "d", "e"]
    state.record(_ok("a"))
    state.record(_err("b"))
    state.record_transient("c", "overloaded_error", "529", attempts=4)
    state.mark_inflight(["d"])
    assert list(state.remaining(False)) == ["c", "d", "e"]
    assert list(state.remaining(True)) == ["b", "c", "d", "e"]
    assert state.count_remaining(False) == 3 and state.count_remaining(True) == 4
    assert state.status_of("c") == "transient" and state.prior_attempts("c") == 4
    stored = state.get_result("a")
    assert stored is not None and (stored.status, stored.text, stored.attempts) == ("ok", "answer a", 1)
    assert state.get_result("c") is None  # a transient mark without a result stores none


def test_attempts_add_up_over_runs_like_usage(state: JobState) -> None:
    state.sync_rows(_rows(["c"]))
    state.record_transient("c", "overloaded_error", "529", attempts=4)
    state.record_transient("c", "overloaded_error", "529", attempts=2)
    assert state.prior_attempts("c") == 6
    answer = _ok("c")
    state.record(answer)
    stored = state.get_result("c")
    assert answer.attempts == 7 and stored is not None and stored.attempts == 7


def test_mark_inflight_keeps_finished_rows(state: JobState) -> None:
    state.sync_rows(_rows(["a", "b", "c"]))
    state.record(_ok("a"))
    state.record(_err("b"))
    state.record_transient("c", "api_error", "500", 2)
    state.mark_inflight(["a", "b", "c"])
    assert [state.status_of(i) for i in "abc"] == ["done", "error", "inflight"]


def test_mark_batched_holds_rows_until_settled(state: JobState) -> None:
    state.sync_rows(_rows(["a", "b", "c", "d"]))
    state.record(_ok("a"))
    state.record(_err("b"))
    state.put_batch("msgbatch_1", [state.custom_id(i) for i in "abcd"])
    state.mark_batched(["a", "b", "c", "d"])
    assert [state.status_of(i) for i in "abcd"] == ["done", "batched", "batched", "batched"]
    assert list(state.remaining(True)) == []
    state.record(_ok("c"))
    state.record_transient("d", "expired", "the batch expired", 1)
    assert list(state.remaining(False)) == ["d"]
    assert state.get_result("b") is not None  # the old error stays until a new outcome


def test_growing_manifest_new_rows_and_removed_rows(state: JobState) -> None:
    state.sync_rows(_rows(["a", "b", "c"]))
    state.record(_ok("a"))
    report = state.sync_rows(_rows(["x", "a", "c", "d"]))  # b removed, x and d new, order changed
    assert (report.rows, report.new_rows, report.removed) == (4, 2, 1)
    assert list(state.remaining(False)) == ["x", "c", "d"]


def test_duplicates_detected_in_sql_and_named(state: JobState) -> None:
    ids = [f"r{i}" for i in range(5000)] + [f"r{i}" for i in range(0, 60, 2)] + ["r7", "r7"]
    report = state.sync_rows(_rows(ids))
    assert report.duplicate_count == 31
    assert report.duplicates == [f"r{i}" for i in (0, 2, 4, 6, 7, *range(8, 38, 2))][:20]
    # A later pass without the duplicates reports none: counting is per pass.
    assert state.sync_rows(_rows(["r1", "r2"])).duplicate_count == 0


def test_pending_filters_a_second_manifest_stream(state: JobState) -> None:
    rows = _rows(["a", "b", "c", "a", "d"])
    state.sync_rows(rows)
    state.record(_ok("b"))
    state.record(_err("d"))
    assert [(r.id, r.index) for r in state.pending(rows, retry_errors=False)] == [("a", 0), ("c", 2)]
    assert [r.id for r in state.pending(rows, retry_errors=True)] == ["a", "c", "d"]


def test_custom_id_mapping(state: JobState) -> None:
    ids = ["plain_id-1", "has space", "ünïcode", "x" * 65]
    state.sync_rows(_rows(ids))
    for i in ids:
        cid = state.custom_id(i)
        assert cid == custom_id_for(i) and len(cid) <= 64
        assert state.id_for_custom_id(cid) == i
    assert state.custom_id("plain_id-1") == "plain_id-1"
    assert state.id_for_custom_id("never-made") is None


def test_remaining_pages_while_caller_writes(state: JobState) -> None:
    state.sync_rows(_rows([f"r{i:05d}" for i in range(4500)]))
    seen = []
    for row_id in state.remaining(False):
        seen.append(row_id)
        state.record(_ok(row_id))  # writing between pages must neither skip nor repeat rows
    assert seen == [f"r{i:05d}" for i in range(4500)]
    assert list(state.remaining(False)) == []


# --- durability -----------------------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import os, sys, time
    from batcher.records import Result, Row
    from batcher.state import JobState
    st = JobState.open(sys.argv[1])
    st.lock()
    st.sync_rows([Row(id=f"r{i}", images=["a.jpg"], prompt="p", fields={}, index=i) for i in range(100)])
    for i in range(int(sys.argv[2])):
        st.record(Result(id=f"r{i}", status="ok", text=f"t{i}", input_tokens=10, output_tokens=5))
    if sys.argv[3] == "exit":
        os._exit(0)
    print("recorded", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_recorded_results_survive_process_death(tmp_path: Path, how: str) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(out), "37", how], stdout=subprocess.PIPE, text=True
    )
    try:
        if how == "sigkill":
            assert proc.stdout is not None and proc.stdout.readline().strip() == "recorded"
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with JobState.open(out) as st:
        st.lock()  # the dead writer's lock is gone
        assert st.summary().by_status == {"ok": 37, "pending": 63}
        assert st.get_result("r36").text == "t36"  # type: ignore[union-attr]
        assert next(st.remaining(False)) == "r37"


def test_open_rejects_other_schema_version(tmp_path: Path) -> None:
    out = tmp_path / "out"
    JobState.open(out).close()
    conn = sqlite3.connect(out / "state.sqlite")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StateError, match="schema version 99"):
        JobState.open(out)


def test_open_rejects_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "state.sqlite").write_bytes(b"definitely not a database" * 100)
    with pytest.raises(StateError, match="cannot open the job state"):
        JobState.open(out)


def test_wal_mode_and_pragmas(state: JobState) -> None:
    assert state.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert state.db.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert state.db.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000


# --- meta, files, batches ---------------------------------------------------------------------------------


def test_meta_roundtrip(state: JobState) -> None:
    assert state.get_meta("fingerprint") is None and state.get_meta("x", 5) == 5
    state.set_meta("fingerprint", {"model": "m", "n": [1, 2]})
    state.set_meta("fingerprint", {"model": "m2"})
    assert state.get_meta("fingerprint") == {"model": "m2"}


def test_files_crud(state: JobState) -> None:
    rec = FileRecord(sha256="ab" * 32, file_id="file_1", bytes=1234, uploaded_at=1.0, expires_at=99.0)
    state.put_file(rec)
    assert state.get_file(rec.sha256) == rec
    state.put_file(FileRecord(sha256=rec.sha256, file_id="file_2", bytes=1234, uploaded_at=2.0))
    assert state.get_file(rec.sha256).file_id == "file_2"  # type: ignore[union-attr]
    state.put_file(FileRecord(sha256="cd" * 32, file_id="file_3", bytes=10, uploaded_at=3.0))
    assert [f.file_id for f in state.list_files()] == ["file_2", "file_3"]
    assert state.summary().file_bytes == 1244
    state.delete_file(rec.sha256)
    assert state.get_file(rec.sha256) is None


def test_batches_crud(state: JobState) -> None:
    ids = [f"c{i:05d}" for i in range(4100)]
    state.put_batch("msgbatch_1", ids, created_at=10.0)
    state.put_batch("msgbatch_2", ["z"], status="ended", created_at=20.0)
    b = state.get_batch("msgbatch_1")
    assert b is not None and (b.status, b.request_count, b.counts) == ("in_progress", 4100, {})
    assert list(state.batch_custom_ids("msgbatch_1")) == ids
    state.update_batch("msgbatch_1", status="ended", counts={"succeeded": 4000, "errored": 100})
    b = state.get_batch("msgbatch_1")
    assert b is not None and b.status == "ended" and b.counts["errored"] == 100
    assert [x.batch_id for x in state.list_batches()] == ["msgbatch_1", "msgbatch_2"]
    assert [x.batch_id for x in state.list_batches("in_progress")] == []
    with pytest.raises(StateError, match="no batch"):
        state.update_batch("nope", status="ended")


# --- summary ---------------------------------------------------------------------------------------------


def test_summary_counts_tokens_cost_and_spend_of_retries(state: JobState) -> None:
    state.sync_rows(_rows(["a", "b", "c", "d"]))
    state.record(
        _ok("a", input_tokens=100, output_tokens=20, cost_usd=0.01, latency_s=1.5, cache_read_input_tokens=7)
    )
    state.record(_err("b", "invalid_request_error"))
    state.record_transient("c", "overloaded_error", "529", 3)
    s = state.summary()
    assert s.rows == 4
    assert s.by_status == {"ok": 1, "error": 1, "transient": 1, "pending": 1}
    assert s.errors_by_type == {"invalid_request_error": 1, "overloaded_error": 1}
    assert (s.input_tokens, s.output_tokens, s.cache_read_input_tokens) == (100, 20, 7)
    assert s.cost_usd == pytest.approx(0.01) and s.request_time_s == pytest.approx(1.5)
    assert s.runs == 1 and s.time_spent_s >= 0
    # A retried row's earlier answer was paid for too: spend accumulates.
    state.record(_ok("a", input_tokens=50, output_tokens=5, cost_usd=0.005))
    s = state.summary()
    assert (s.input_tokens, s.output_tokens) == (150, 25) and s.cost_usd == pytest.approx(0.015)


def test_time_spent_over_passes(state: JobState, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 105.0, 110.0, 200.0, 201.0, 230.0])
    monkeypatch.setattr(time, "time", lambda: next(clock))
    p1 = state.begin_pass()  # 100
    state.sync_rows(_rows(["a"]), p1)  # 105 (last write)
    state.end_pass(p1)  # 110
    p2 = state.begin_pass()  # 200
    state.sync_rows(_rows(["a"]), p2)  # 201; never ended: counts to its last write
    monkeypatch.undo()
    s = state.summary()
    assert s.runs == 2 and s.time_spent_s == pytest.approx(10 + 1)
    assert os.path.exists(state.out_dir / "state.sqlite")


def test_close_ends_only_its_own_pass(tmp_path: Path) -> None:
    runner = JobState.open(tmp_path / "out")
    pass_id = runner.sync_rows(_rows(["a"])).pass_id
    JobState.open(tmp_path / "out").close()  # e.g. `batcher status` while the run goes on
    finished = "SELECT finished_at FROM passes WHERE pass_id = ?"
    assert runner.db.conn.execute(finished, (pass_id,)).fetchone()[0] is None
    runner.close()
    with JobState.open(tmp_path / "out") as again:
        assert again.db.conn.execute(finished, (pass_id,)).fetchone()[0] is not None
