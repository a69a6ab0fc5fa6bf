"""`batcher run` end to end: a real subprocess, real sockets, the simulator's ledger as the witness."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from batcher.simulator.config import Faults, Latency, RateLimits, SimConfig
from batcher.sink import read_results
from tests.helpers import (
    batcher,
    good_rows,
    messages_sent,
    results_by_id,
    wait_for_messages,
    write_job,
)


def test_mixed_manifest_good_rows_answered_bad_rows_named(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    rows = good_rows(tmp_path, 6)
    (tmp_path / "images" / "empty.jpg").write_bytes(b"")
    (tmp_path / "images" / "text.png").write_text("this is not a picture\n")
    whole = (tmp_path / "images" / "good000.jpg").read_bytes()
    (tmp_path / "images" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    bad = {
        "missing": {"id": "missing", "image": "images/nope.jpg", "kind": "photo"},
        "empty": {"id": "empty", "image": "images/empty.jpg", "kind": "photo"},
        "truncated": {"id": "truncated", "image": "images/truncated.jpg", "kind": "photo"},
        "text-as-png": {"id": "text-as-png", "image": "images/text.png", "kind": "photo"},
        "no-kind": {"id": "no-kind", "image": rows[0]["image"]},
    }
    job = write_job(tmp_path, rows[:3] + list(bad.values()) + rows[3:])

    done = batcher(job, simulator)
    assert done.returncode == 3, done.stderr
    results = results_by_id(tmp_path / "out")
    assert set(results) == {r["id"] for r in rows} | set(bad)
    for row in rows:
        got = results[row["id"]]
        assert got["status"] == "ok" and f"nonce={row['id']}" in got["text"]
        assert got["images"][0]["media_type"] == "image/jpeg" and got["input_tokens"] > 0
    expected = {
        "missing": "not_found",
        "empty": "empty_file",
        "truncated": "truncated",
        "text-as-png": "not_an_image",
        "no-kind": "template_error",
    }
    for row_id, error_type in expected.items():
        assert results[row_id]["status"] == "error"
        assert results[row_id]["error_type"] == error_type, results[row_id]["error_message"]
        assert results[row_id]["error_message"]
    assert messages_sent(simulator) == len(rows)

    again = batcher(job, simulator)
    assert again.returncode == 3, again.stderr
    assert messages_sent(simulator) == len(rows), "a rerun sent rows that were done"
    assert len(results_by_id(tmp_path / "out")) == len(rows) + len(bad)


def test_growing_manifest_sends_only_new_rows(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    rows = good_rows(tmp_path, 4)
    job = write_job(tmp_path, rows)
    assert batcher(job, simulator).returncode == 0
    more = rows + good_rows(tmp_path, 3, start=4)
    write_job(tmp_path, more)
    done = batcher(job, simulator)
    assert done.returncode == 0, done.stderr
    assert messages_sent(simulator) == 7
    assert set(results_by_id(tmp_path / "out")) == {r["id"] for r in more}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("max_tokens = 60", "max_tokens = 60\ncolour = 1"), "request.colour: unknown key"),
        (("max_tokens = 60", 'max_tokens = "many"'), "request.max_tokens"),
        (('manifest = "manifest.jsonl"', 'manifest = "nope.jsonl"'), "nope.jsonl"),
        (('image_column = "image"', 'image_column = "picture"'), "input.image_column"),
        (('model = "claude-haiku-5-5"', 'model = "claude-imaginary-9"'), "request.model"),
        (
            ('model = "claude-haiku-5-5"', 'model = "claude-haiku-5-5"\ntemperature = 0.5'),
            "request.temperature",
        ),
    ],
)
def test_config_errors_are_one_line_exit_2_nothing_sent(tmp_path: Path, simulator, edit, message) -> None:  # type: ignore[no-untyped-def]
    job = write_job(tmp_path, good_rows(tmp_path, 2))
    job.write_text(job.read_text().replace(*edit))
    done = batcher(job, simulator)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(job) in lines[0]
    assert messages_sent(simulator) == 0


def test_duplicate_ids_are_named_and_nothing_is_sent(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    rows = good_rows(tmp_path, 3)
    rows.append(dict(rows[1]))
    done = batcher(write_job(tmp_path, rows), simulator)
    assert done.returncode == 2 and "duplicate ids: row-001" in done.stderr
    assert messages_sent(simulator) == 0


def test_retired_model_stops_before_sending(tmp_path: Path, make_simulator) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    sim = make_simulator(SimConfig(today=dt.date(2026, 12, 1)))
    job = write_job(tmp_path, good_rows(tmp_path, 2))
    job.write_text(job.read_text().replace("claude-haiku-5-5", "claude-sonnet-4-5"))
    done = batcher(job, sim)
    assert done.returncode == 2 and "request.model" in done.stderr
    assert messages_sent(sim) == 0


def test_no_key_and_bad_key_are_fatal(tmp_path: Path, make_simulator) -> None:  # type: ignore[no-untyped-def]
    sim = make_simulator(SimConfig(api_key="the-right-key"))
    job = write_job(tmp_path, good_rows(tmp_path, 2))
    no_key = batcher(job, sim, key=None)
    assert no_key.returncode == 1 and "ANTHROPIC_API_KEY" in no_key.stderr
    wrong = batcher(job, sim, key="the-wrong-key")
    assert wrong.returncode == 1 and "authentication_error" in wrong.stderr
    assert "the-wrong-key" not in wrong.stderr + wrong.stdout
    assert messages_sent(sim) == 0
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert b"the-wrong-key" not in path.read_bytes(), path


def test_a_second_run_exits_at_once_touching_nothing(tmp_path: Path, make_simulator) -> None:  # type: ignore[no-untyped-def]
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.5)))
    job = write_job(tmp_path, good_rows(tmp_path, 8), concurrency=1)
    first = batcher(job, sim, wait=False)
    try:
        deadline = time.monotonic() + 30
        while messages_sent(sim) == 0 and sim.sim.ledger.in_flight == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "out").rglob("*"))
        second = batcher(job, sim)
        assert second.returncode == 4 and "in use by another batcher run" in second.stderr
        after = sorted(
            (p.name, p.stat().st_mtime_ns) for p in (tmp_path / "out").rglob("*") if p.name in dict(before)
        )
        assert [n for n, _ in after] == [n for n, _ in before]
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)


def test_sigint_stops_cleanly_and_the_rerun_finishes(tmp_path: Path, make_simulator) -> None:  # type: ignore[no-untyped-def]
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.3)))
    rows = good_rows(tmp_path, 20)
    job = write_job(tmp_path, rows, concurrency=2)
    proc = batcher(job, sim, wait=False)
    wait_for_messages(sim, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    partial = results_by_id(tmp_path / "out")
    assert 0 < len(partial) < len(rows)
    done = batcher(job, sim)
    assert done.returncode == 0, done.stderr
    assert set(results_by_id(tmp_path / "out")) == {r["id"] for r in rows}
    charges = sim.sim.ledger.snapshot()["charges_by_nonce"]
    assert max(charges.values()) == 1, "a graceful stop must not pay for any row twice"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_once_under_a_slow_rate_limit(tmp_path: Path, make_simulator, signum) -> None:  # type: ignore[no-untyped-def]
    # One request a second and concurrency 16: rows queue for the limits. A stop must not send
    # them all first (that took a minute here), only let the requests already sent finish.
    sim = make_simulator(
        SimConfig(limits=RateLimits(rpm=60, burst_window_s=2.0), latency=Latency(base_s=0.2))
    )
    rows = good_rows(tmp_path, 40)
    job = write_job(tmp_path, rows, concurrency=16)
    proc = batcher(job, sim, wait=False)
    wait_for_messages(sim, 3, proc)
    signalled_at, sent_then = time.monotonic(), messages_sent(sim)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - signalled_at
    assert proc.returncode == 75, err
    assert took < 5.0, f"exited {took:.1f}s after the signal"
    assert messages_sent(sim) <= sent_then + 2, "requests were sent after the signal"
    assert len(results_by_id(tmp_path / "out")) == messages_sent(sim)


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ("auth_error_after", "authentication_error"),
        ("billing_error_after", "billing_error"),
        ("spend_limit_after", "enforced_spend_limit_reached"),
    ],
)
def test_a_fatal_answer_mid_run_stops_the_job_and_keeps_what_is_done(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    fault: str,
    said: str,
) -> None:
    # The key is revoked, the credit runs out, the monthly spend limit is hit: after 5 answers
    # nothing else can succeed. Stop at once (no retries, no storm), exit 1, keep the 5.
    sim = make_simulator(SimConfig(faults=Faults(**{fault: 5})))
    rows = good_rows(tmp_path, 30)
    job = write_job(tmp_path, rows, concurrency=2)
    done = batcher(job, sim)
    assert done.returncode == 1, done.stderr
    stopped = [ln for ln in done.stderr.splitlines() if ln.startswith("batcher: stopped")]
    assert len(stopped) == 1 and said in stopped[0], done.stderr
    assert "Traceback" not in done.stderr
    statuses = sim.sim.ledger.snapshot()["requests"]["POST /v1/messages"]
    assert statuses.get("200") == 5
    assert sum(statuses.values()) - 5 <= 2, statuses  # only what was already in flight
    kept = results_by_id(tmp_path / "out")
    assert len(kept) == 5 and {r["status"] for r in kept.values()} == {"ok"}
    # Fixed (a new key, more credit): the rerun sends only the rest.
    sim.sim.config.faults = Faults()
    sim.sim.reconfigure()
    again = batcher(job, sim)
    assert again.returncode == 0, again.stderr
    assert set(results_by_id(tmp_path / "out")) == {r["id"] for r in rows}
    assert max(sim.sim.ledger.snapshot()["charges_by_nonce"].values()) == 1


def test_faults_on_the_wire_still_give_every_row_exactly_one_answer(tmp_path: Path, make_simulator) -> None:  # type: ignore[no-untyped-def]
    # 529s, 500s and connections cut mid-answer: every row retried to one answer, none lost, and
    # the only rows the API billed twice are those whose answer was cut after it was billed.
    sim = make_simulator(SimConfig(faults=Faults(overloaded=0.1, server_error=0.05, drop=0.05, seed=7)))
    rows = good_rows(tmp_path, 40)
    job = write_job(tmp_path, rows, concurrency=8, max_attempts=10)
    done = batcher(job, sim)
    assert done.returncode == 0, done.stderr
    out = results_by_id(tmp_path / "out")
    assert set(out) == {r["id"] for r in rows} and {r["status"] for r in out.values()} == {"ok"}
    assert all(f"nonce={rid}" in r["text"] for rid, r in out.items())  # each its own answer
    ledger = sim.sim.ledger.snapshot()
    faults = ledger["faults"]
    assert faults.get("overloaded", 0) + faults.get("server_error", 0) > 0 and faults.get("drop", 0) > 0
    twice = sum(1 for n in ledger["charges_by_nonce"].values() if n > 1)
    assert twice <= faults.get("drop", 0)
    assert sum(r["attempts"] for r in out.values()) > len(rows)  # the retries are counted


def test_rows_out_of_retries_are_left_for_the_next_run(tmp_path: Path, make_simulator) -> None:  # type: ignore[no-untyped-def]
    sim = make_simulator(SimConfig(faults=Faults(overloaded=1.0)))
    rows = good_rows(tmp_path, 3)
    job = write_job(tmp_path, rows, max_attempts=2)
    first = batcher(job, sim)
    assert first.returncode == 75, first.stderr
    assert messages_sent(sim) == 6  # 3 rows x 2 attempts, then left for the next run
    assert not (tmp_path / "out" / "results").exists() or read_results(tmp_path / "out").num_rows == 0
    sim.sim.config.faults.overloaded = 0.0
    sim.sim.reconfigure()
    second = batcher(job, sim)
    assert second.returncode == 0, second.stderr
    out = results_by_id(tmp_path / "out").values()
    assert all(r["status"] == "ok" for r in out)
    assert [r["attempts"] for r in out] == [3, 3, 3]  # attempts count across runs: 2 + 1


def test_kill_9_twice_then_every_id_exactly_once(tmp_path: Path, make_simulator) -> None:  # type: ignore[no-untyped-def]
    concurrency = 4
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.05, jitter_s=0.1)))
    rows = good_rows(tmp_path, 60)
    job = write_job(tmp_path, rows, concurrency=concurrency, part_rows=7)
    for kill_after in (10, 30):
        proc = batcher(job, sim, wait=False)
        wait_for_messages(sim, kill_after, proc, timeout_s=60, poll_s=0.01)
        proc.kill()
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        # every part on disk at any moment is a whole, readable file
        results_by_id(tmp_path / "out")
    done = batcher(job, sim)
    assert done.returncode == 0, done.stderr
    results = results_by_id(tmp_path / "out")
    assert set(results) == {r["id"] for r in rows}
    assert all(r["status"] == "ok" for r in results.values())
    charges = sim.sim.ledger.snapshot()["charges_by_nonce"]
    assert set(charges) == {r["id"] for r in rows}
    twice = sum(n - 1 for n in charges.values())
    # only the requests in flight at each kill can have been paid for twice
    assert twice <= 2 * concurrency, charges


def test_retry_errors_sends_final_errors_again_and_keeps_one_row_per_id(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    rows = good_rows(tmp_path, 2)
    rows.append({"id": "late", "image": "images/late.jpg", "kind": "photo"})
    job = write_job(tmp_path, rows)
    assert batcher(job, simulator).returncode == 3
    assert results_by_id(tmp_path / "out")["late"]["error_type"] == "not_found"
    Image.new("RGB", (300, 300), (1, 2, 3)).save(tmp_path / "images" / "late.jpg")
    assert batcher(job, simulator).returncode == 3  # final errors stay as they are by default
    assert messages_sent(simulator) == 2
    fixed = batcher(job, simulator, "--retry-errors")
    assert fixed.returncode == 0, fixed.stderr
    results = results_by_id(tmp_path / "out")
    assert results["late"]["status"] == "ok" and len(results) == 3
    assert messages_sent(simulator) == 3


def test_status_reports_counts_errors_tokens_and_spend(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    rows = good_rows(tmp_path, 3)
    rows.append({"id": "gone", "image": "images/gone.jpg", "kind": "photo"})
    # under 200 px a side: sent, with a warning counted (the seed says accuracy drops)
    Image.new("RGB", (150, 120), (10, 200, 30)).save(tmp_path / "images" / "tiny.png")
    rows.append({"id": "tiny", "image": "images/tiny.png", "kind": "icon"})
    job = write_job(tmp_path, rows)
    run = batcher(job, simulator)
    assert run.returncode == 3
    assert "rows ok 4 | error 1" in run.stderr and str(tmp_path / "out" / "results") in run.stdout
    assert "warnings small_image 1" in run.stderr.strip().splitlines()[-1]
    cmd = [sys.executable, "-m", "batcher.cli", "status", str(tmp_path / "out")]
    shown = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "5 rows in the manifest" in shown.stdout and "not_found" in shown.stdout
    assert "warnings   small_image 1" in shown.stdout
    # the limits as the run ended (in flight 0), not as they were at its first answer
    assert "in flight 0/" in shown.stdout
    as_json = json.loads(subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60).stdout)
    assert as_json["by_status"] == {"ok": 4, "error": 1}
    assert as_json["warnings"] == {"small_image": 1}
    assert as_json["input_tokens"] == simulator.sim.ledger.snapshot()["input_tokens"]
    assert as_json["cost_usd"] > 0
