"""Issue 13, the job state's part: edits to answered rows, removed rows, status against the Parquet,
duplicate ids and id collisions, a v1 state, a stale "in flight" after kill -9, and a run that
starts sending before (or without) a full sync of the manifest."""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from batcher import resume
from batcher.commands.status import show_status
from batcher.records import HASHED_CUSTOM_ID_PREFIX, Result, Row, custom_id_for
from batcher.runner import EXIT_CONFIG, EXIT_OK, EXIT_ROW_ERRORS
from batcher.sink import REMOVED_DIR, REMOVED_FILE
from batcher.state import (
    SCHEMA_VERSION,
    ContentHasher,
    DuplicateIds,
    JobState,
    StateError,
    SyncGate,
    acquire_lock,
    is_changed,
    lock_holder,
)
from tests.helpers import batcher, messages_sent, results_by_id, run_job, write_jsonl

JOB = """
[input]
manifest = "manifest.jsonl"
id_column = "id"
image_column = "image"
prompt = "Caption it. nonce={{id}}-{{v}}"

[request]
model = "claude-haiku-5-5"
max_tokens = {max_tokens}

[run]
output = "out"
part_rows = 2
"""


def write_images(tmp: Path, n: int) -> None:
    (tmp / "images").mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (300, 220), (i * 20 % 256, 80, 160)).save(tmp / "images" / f"i{i}.jpg")


def rows_for(ids: Iterable[int], version: int = 1) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "image": f"images/i{i}.jpg", "v": version} for i in ids]


def write_job(tmp: Path, *, max_tokens: int = 80) -> Path:
    (tmp / "job.toml").write_text(JOB.format(max_tokens=max_tokens))
    return tmp / "job.toml"


def assert_status_agrees_with_parquet(out: Path) -> None:
    """What `batcher status` counts is what the Parquet holds: rows, ok, errors."""
    with JobState.open(out) as state:
        s = state.summary()
    table = results_by_id(out)
    by_status = Counter(r["status"] for r in table.values())
    assert len(table) == s.rows == s.exported_rows
    assert by_status["ok"] == s.by_status.get("ok", 0)
    assert by_status["error"] == s.by_status.get("error", 0)


# --- pure decisions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "answered", "current", "expected"),
    [
        ("done", 1, 2, True),
        ("error", 1, 2, True),
        ("done", 1, 1, False),
        ("done", None, 2, False),
        ("done", 1, None, False),
        ("transient", 1, 2, False),
        ("inflight", 1, 2, False),
        ("batched", 1, 2, False),
        (None, None, 2, False),
    ],
)
def test_is_changed(status: str | None, answered: int | None, current: int | None, expected: bool) -> None:
    assert is_changed(status, answered, current) is expected


def test_content_hash_covers_prompt_images_file_and_settings(tmp_path: Path) -> None:
    img = tmp_path / "a.jpg"
    img.write_bytes(b"x" * 10)
    row = Row(id="a", images=[str(img)], prompt="p", fields={}, index=0)
    base = ContentHasher(b"s1")(row)
    assert ContentHasher(b"s1")(row) == base
    assert ContentHasher(b"s2")(row) != base  # request settings
    assert ContentHasher(b"s1")(Row(id="a", images=[str(img)], prompt="q", fields={}, index=0)) != base
    assert (
        ContentHasher(b"s1")(Row(id="a", images=[str(img), str(img)], prompt="p", fields={}, index=0)) != base
    )
    img.write_bytes(b"y" * 11)  # the file, edited in place
    assert ContentHasher(b"s1")(row) != base


# --- schema ---------------------------------------------------------------------------------------

_V1_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE passes(
  pass_id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, last_write_at REAL NOT NULL,
  finished_at REAL, rows INTEGER, new_rows INTEGER, duplicates INTEGER);
CREATE TABLE rows(
  id TEXT PRIMARY KEY, custom_id TEXT NOT NULL UNIQUE, manifest_index INTEGER NOT NULL,
  first_seen_pass INTEGER NOT NULL, last_seen_pass INTEGER NOT NULL, seen_in_pass INTEGER NOT NULL);
CREATE INDEX rows_by_pass ON rows(last_seen_pass, manifest_index);
CREATE TABLE results(
  id TEXT PRIMARY KEY,
  status TEXT NOT NULL CHECK (status IN ('done', 'error', 'transient', 'inflight', 'batched')),
  error_type TEXT, error_message TEXT, attempts INTEGER NOT NULL DEFAULT 0,
  input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
  cache_read_tokens INTEGER NOT NULL DEFAULT 0, cache_write_tokens INTEGER NOT NULL DEFAULT 0,
  cost_usd REAL NOT NULL DEFAULT 0, latency_s REAL NOT NULL DEFAULT 0,
  result_json TEXT, updated_at REAL NOT NULL,
  version INTEGER NOT NULL DEFAULT 0, part_id INTEGER);
CREATE INDEX results_by_part ON results(part_id);
CREATE TABLE parts(
  part_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, rows INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'final')), dirty INTEGER NOT NULL DEFAULT 0,
  created_at REAL NOT NULL);
CREATE TABLE files(
  sha256 TEXT PRIMARY KEY, file_id TEXT NOT NULL, bytes INTEGER NOT NULL, uploaded_at REAL NOT NULL,
  expires_at REAL);
CREATE TABLE batches(
  batch_id TEXT PRIMARY KEY, created_at REAL NOT NULL, status TEXT NOT NULL,
  request_count INTEGER NOT NULL, counts TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL);
CREATE TABLE batch_items(batch_id TEXT NOT NULL, custom_id TEXT NOT NULL,
  PRIMARY KEY (batch_id, custom_id)) WITHOUT ROWID;
"""


def _v1_state(out: Path, done: list[str], pending: list[str]) -> None:
    """A state as batcher wrote it before schema 2: rows synced, some answered."""
    out.mkdir(parents=True)
    conn = sqlite3.connect(out / "state.sqlite")
    conn.executescript(_V1_SCHEMA)
    conn.execute(
        "INSERT INTO passes(started_at, last_write_at, finished_at, rows, new_rows, duplicates) "
        "VALUES (1, 2, 2, ?, ?, 0)",
        (len(done + pending),) * 2,
    )
    for n, row_id in enumerate(done + pending):
        conn.execute("INSERT INTO rows VALUES (?, ?, ?, 1, 1, 1)", (row_id, row_id, n))
    for row_id in done:
        conn.execute(
            "INSERT INTO results(id, status, attempts, result_json, updated_at, version) "
            "VALUES (?, 'done', 1, ?, 2, 1)",
            (row_id, Result(id=row_id, status="ok").to_json()),
        )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_a_v1_state_opens_migrated_and_its_answers_are_taken_as_current(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _v1_state(out, done=["a", "b"], pending=["c"])
    rows = [Row(id=i, images=[], prompt=f"p{i}", fields={}, index=n) for n, i in enumerate("abc")]
    with JobState.open(out) as state:
        assert state._query("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 4
        assert state.summary().by_status == {"ok": 2, "pending": 1}
        assert list(state.remaining(False)) == ["c"]
        state.sync_rows(rows)
        # Answered before hashes existed: taken as answered for the manifest as the first v2 sync
        # read it, so nothing counts as changed...
        assert state.count_changed() == 0
        assert [r.id for r in state.pending(rows, False)] == ["c"]
    # ...and an edit after that is seen.
    rows[0].prompt = "edited"
    with JobState.open(out) as state:
        state.sync_rows(rows)
        assert state.count_changed() == 1
        assert [r.id for r in state.pending(rows, False, redo_changed=True)] == ["a", "c"]


# --- duplicates and collisions ---------------------------------------------------------------------


def test_a_custom_id_collision_names_both_ids(tmp_path: Path) -> None:
    hashed = custom_id_for("x y")
    assert hashed.startswith(HASHED_CUSTOM_ID_PREFIX)
    rows = [
        Row(id="x y", images=[], prompt="", fields={}, index=0),
        Row(id=hashed, images=[], prompt="", fields={}, index=1),
    ]
    with JobState.open(tmp_path / "out") as state, pytest.raises(StateError) as caught:
        state.sync_rows(rows)
    assert "'x y'" in str(caught.value) and repr(hashed) in str(caught.value)
    # Across chunks too (the first id already in the table).
    with JobState.open(tmp_path / "out2") as state, pytest.raises(StateError) as caught:
        state.sync_rows(rows, chunk=1)
    assert "'x y'" in str(caught.value) and repr(hashed) in str(caught.value)


def test_a_sync_beside_the_pipeline_stops_at_the_first_chunk_with_a_duplicate(tmp_path: Path) -> None:
    ids = [f"r{i}" for i in range(10)] + ["r3"] + [f"s{i}" for i in range(10)]
    rows = [Row(id=i, images=[], prompt="", fields={}, index=n) for n, i in enumerate(ids)]
    gate = SyncGate()
    with JobState.open(tmp_path / "out") as state:
        with pytest.raises(DuplicateIds) as caught:
            state.sync_rows(rows, gate=gate, chunk=4)
        assert caught.value.ids == ["r3"] and "more may follow" in str(caught.value)
        assert gate.synced == 7  # the chunks before the one holding the duplicate
        assert state.current_pass() is None  # an incomplete pass
        gate.fail(caught.value)
        # The resume pass yields the synced prefix, then stops with the sync's error.
        seen: list[str] = []
        with pytest.raises(DuplicateIds):
            for row in state.pending(rows, False, gate=gate):
                seen.append(row.id)
        assert seen == ids[:8]


# --- lock_holder and the stale in-flight figure ------------------------------------------------------


def test_status_after_a_dead_run_shows_nothing_in_flight(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with JobState.open(out) as state:
        state.sync_rows([Row(id="a", images=[], prompt="", fields={}, index=0)])
        # The last snapshot a run wrote before it was killed with 15 requests in flight.
        state.set_meta(
            "rate_limits",
            {
                "limits": {"requests": 50},
                "source": "headers",
                "in_flight": 15,
                "in_flight_limit": 16,
                "rate_limited": 0,
            },
        )
    (out / ".lock").write_text("999999\n")  # the dead run's pid, no lock held
    assert lock_holder(out) is None
    assert show_status(out) == 0
    text = capsys.readouterr().out
    assert "in flight 0/16" in text and "15/16" not in text and "running now" not in text
    with acquire_lock(out):  # a live run: its figure stands
        assert lock_holder(out) == os.getpid()
        assert show_status(out) == 0
        text = capsys.readouterr().out
        assert "in flight 15/16" in text and f"running now (pid {os.getpid()})" in text


# --- end to end: edits, removals, status against the Parquet --------------------------------------------


def test_edited_rows_are_reported_then_resent_only_with_redo_changed(tmp_path: Path, simulator: Any) -> None:
    write_images(tmp_path, 6)
    write_jsonl(tmp_path / "manifest.jsonl", rows_for(range(6)))
    job = write_job(tmp_path)
    done = batcher(job, simulator)
    assert done.returncode == 0, done.stderr
    before = results_by_id(tmp_path / "out")
    assert messages_sent(simulator) == 6

    # A prompt edited (r1), an image edited in place (r2), the rest as they were.
    rows = rows_for(range(6))
    rows[1]["v"] = 2
    time.sleep(0.01)
    Image.new("RGB", (300, 220), (255, 255, 0)).save(tmp_path / "images" / "i2.jpg")
    write_jsonl(tmp_path / "manifest.jsonl", rows)
    again = batcher(job, simulator)
    assert again.returncode == 0, again.stderr
    assert messages_sent(simulator) == 6  # nothing resent without being asked
    assert "2 row(s) changed since they were answered" in again.stderr and "--redo-changed" in again.stderr
    assert results_by_id(tmp_path / "out") == before

    redo = batcher(job, simulator, "--redo-changed")
    assert redo.returncode == 0, redo.stderr
    assert messages_sent(simulator) == 8  # exactly the two changed rows
    after = results_by_id(tmp_path / "out")
    assert set(after) == set(before)
    assert "nonce=r1-2" in after["r1"]["text"] and "nonce=r1-1" in before["r1"]["text"]
    assert after["r2"]["text"] != before["r2"]["text"] and "#ffff00" in after["r2"]["text"]
    assert all(after[i] == before[i] for i in ("r0", "r3", "r4", "r5"))
    assert "changed since" not in redo.stderr
    assert_status_agrees_with_parquet(tmp_path / "out")

    # Settings that shape the answer change every row's hash.
    write_job(tmp_path, max_tokens=90)
    settings = batcher(job, simulator)
    assert settings.returncode == 0 and "6 row(s) changed" in settings.stderr
    assert messages_sent(simulator) == 8


def test_removed_rows_leave_the_results_and_a_fixed_broken_line_leaves_no_stale_error(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_images(tmp_path, 6)
    good = rows_for(range(6))
    write_jsonl(tmp_path / "manifest.jsonl", [*good[:3], '{"id": "r9", "image": ', *good[3:]])
    job = write_job(tmp_path)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_ROW_ERRORS, err
    first = results_by_id(tmp_path / "out")
    assert len(first) == 7 and sum(r["status"] == "error" for r in first.values()) == 1
    assert_status_agrees_with_parquet(tmp_path / "out")

    # The broken line fixed (a new row r9), r0 and r4 removed.
    write_images(tmp_path, 10)
    fixed = [good[1], good[2], *rows_for([9]), good[3], good[5]]
    write_jsonl(tmp_path / "manifest.jsonl", fixed)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_OK, err
    table = results_by_id(tmp_path / "out")
    assert set(table) == {"r1", "r2", "r9", "r3", "r5"}
    assert all(r["status"] == "ok" for r in table.values())
    assert_status_agrees_with_parquet(tmp_path / "out")
    assert messages_sent(simulator) == 7  # only r9 was new
    import pyarrow.parquet as pq

    removed = pq.read_table(tmp_path / "out" / REMOVED_DIR / REMOVED_FILE).to_pylist()
    [broken] = [i for i in first if i not in good_ids(good)]  # the broken line's error row
    assert first[broken]["status"] == "error"
    assert sorted(r["id"] for r in removed) == sorted(["r0", "r4", broken])
    assert {r["id"]: r["text"] for r in removed if r["id"] in ("r0", "r4")} == {
        i: first[i]["text"] for i in ("r0", "r4")
    }
    with JobState.open(tmp_path / "out") as state:
        s = state.summary()
    assert (s.rows, s.removed_rows, s.removed_answers) == (5, 3, 3)

    # A removed row that comes back is in the results again, from the state: nothing resent.
    write_jsonl(tmp_path / "manifest.jsonl", [*fixed, good[0]])
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_OK, err
    table = results_by_id(tmp_path / "out")
    assert set(table) == {"r0", "r1", "r2", "r9", "r3", "r5"} and table["r0"] == first["r0"]
    assert messages_sent(simulator) == 7
    assert_status_agrees_with_parquet(tmp_path / "out")
    removed = pq.read_table(tmp_path / "out" / REMOVED_DIR / REMOVED_FILE).to_pylist()
    assert "r0" not in {r["id"] for r in removed}


def good_ids(rows: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in rows}


# --- end to end: sending before the sync is complete, skipping it when the manifest is unchanged ------


def _slow_sync(monkeypatch: pytest.MonkeyPatch, sim: Any, after_rows: int, log: list[str]) -> None:
    """Make the background sync (in a thread) hold after ``after_rows`` rows until the simulator has
    had a request (or 10 s pass: then the run did not send before the sync was complete)."""
    real = JobState.sync_rows

    def sync_rows(self: JobState, rows: Iterable[Row], *args: Any, **kw: Any) -> Any:
        def held() -> Iterator[Row]:
            for n, row in enumerate(rows):
                if n == after_rows:
                    deadline = time.monotonic() + 10
                    while messages_sent(sim) == 0 and time.monotonic() < deadline:
                        time.sleep(0.02)
                    log.append(f"sent before the sync went on: {messages_sent(sim) > 0}")
                yield row
            log.append("sync read every row")

        return real(self, held(), *args, **kw)

    monkeypatch.setattr(JobState, "sync_rows", sync_rows)
    monkeypatch.setattr(resume, "SYNC_IN_PROCESS", False)  # steps into the sync, so in this process
    monkeypatch.setattr(resume, "BACKGROUND_CHUNK", 2)
    monkeypatch.setattr(resume, "GRACE_S", 0.0)


def test_a_run_sends_from_the_synced_prefix_while_the_sync_goes_on(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_images(tmp_path, 8)
    write_jsonl(tmp_path / "manifest.jsonl", rows_for(range(8)))
    job = write_job(tmp_path)
    log: list[str] = []
    _slow_sync(monkeypatch, simulator, 4, log)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_OK, err
    assert log == ["sent before the sync went on: True", "sync read every row"]
    assert len(results_by_id(tmp_path / "out")) == 8 and messages_sent(simulator) == 8

    # The manifest unchanged since that complete sync: the next run does not sync at all.
    log.clear()
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_OK and log == [] and messages_sent(simulator) == 8
    # Changed (a row added): it syncs again, and sends only the new row.
    write_images(tmp_path, 9)
    write_jsonl(tmp_path / "manifest.jsonl", rows_for(range(9)))
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_OK and "sync read every row" in log and messages_sent(simulator) == 9


def test_duplicate_ids_found_after_rows_were_sent_stop_the_run_with_exit_2(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_images(tmp_path, 12)
    rows = rows_for(range(12))
    rows[10]["id"] = "r2"  # a later occurrence of r2, with another image
    write_jsonl(tmp_path / "manifest.jsonl", rows)
    job = write_job(tmp_path)
    log: list[str] = []
    _slow_sync(monkeypatch, simulator, 4, log)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_CONFIG, err
    [line] = [ln for ln in err.splitlines() if "duplicate ids" in ln]
    assert "manifest.jsonl: duplicate ids: r2" in line and "Traceback" not in err
    assert log[0] == "sent before the sync went on: True"
    table = results_by_id(tmp_path / "out")
    sent = messages_sent(simulator)
    assert 1 <= sent <= 10 and len(table) == sent  # every answer is kept
    assert table["r2"]["images"][0]["source"].endswith("i2.jpg")  # never the later occurrence
    assert not {"r10", "r11"} & set(table)  # nothing past the duplicate
