"""``[run] mode = "batch"`` against the simulator's Message Batches, on its batch clock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from batcher.batches import BatchBuilder, Pending, classify, next_delay
from batcher.cost import usage_cost
from batcher.errors import ROW_ERROR_TYPES, RowFailure
from batcher.exits import EXIT_BUDGET, EXIT_INCOMPLETE, EXIT_OK, EXIT_ROW_ERRORS
from batcher.models import load_registry
from batcher.simulator.config import BatchClock, SimConfig
from batcher.simulator.server import RunningSimulator
from batcher.sink import read_results
from batcher.state import JobState
from tests.helpers import requests_sent, results_by_id, run_job

JOB = """
[input]
manifest = "manifest.jsonl"
id_column = "id"
image_column = "image"
prompt_column = "prompt"

[request]
model = "{model}"
max_tokens = 40

[run]
output = "{output}"
mode = "{mode}"
concurrency = 4
max_attempts = 3
poll_initial_s = 0.05
poll_max_s = 0.2
{extra}
"""


# --- pure parts ----------------------------------------------------------------------------------


def test_polling_backs_off_by_doubling_to_the_cap() -> None:
    delays = [1.0]
    for _ in range(8):
        delays.append(next_delay(delays[-1], 60.0))
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


@pytest.mark.parametrize(
    ("result", "kind"),
    [
        ({"type": "succeeded", "message": {}}, "ok"),
        ({"type": "expired"}, "again"),
        ({"type": "canceled"}, "again"),
        (
            {"type": "errored", "error": {"error": {"type": "invalid_request_error", "message": "bad"}}},
            "error",
        ),
        ({"type": "errored", "error": {"error": {"type": "not_found_error", "message": "no file"}}}, "error"),
        ({"type": "errored", "error": {"error": {"type": "overloaded_error", "message": "busy"}}}, "again"),
        ({"type": "errored", "error": {"error": {"type": "api_error", "message": "oops"}}}, "again"),
    ],
)
def test_batch_outcomes_final_or_again(result: dict, kind: str) -> None:
    failure = classify(result)
    got = "ok" if failure is None else "again" if failure.retryable else "error"
    assert got == kind
    if failure is not None:
        # the one row-failure record, its type from the one registry
        assert isinstance(failure, RowFailure) and failure.error_type in ROW_ERROR_TYPES
        assert failure.message and failure.image_index is None


def _pending(size: int) -> Pending:
    return Pending("r", "r", {}, size, [], 0.0, {})


def test_the_builder_keeps_within_requests_and_bytes() -> None:
    builder = BatchBuilder(max_requests=3, max_bytes=1000)
    for _ in range(3):
        assert builder.fits(_pending(100))
        builder.add(_pending(100))
    assert not builder.fits(_pending(1)), "the request count is full"
    assert len(builder.take()) == 3 and not builder.items
    builder.add(_pending(800))
    assert not builder.fits(_pending(200)), "the bytes would pass the limit"


# --- against the simulator -------------------------------------------------------------------------


def write_job(
    tmp: Path,
    n_good: int,
    *,
    mode: str = "batch",
    extra: str = "",
    bad: bool = False,
    output: str = "out",
    model: str = "claude-haiku-5-5",
) -> Path:
    (tmp / "images").mkdir(exist_ok=True)
    rows = []
    for i in range(n_good):
        Image.new("RGB", (300 + 10 * i, 200), (i * 30 % 256, 80, 160)).save(tmp / "images" / f"g{i}.jpg")
        rows.append(
            {"id": f"row-{i:02d}", "image": f"images/g{i}.jpg", "prompt": f"Caption it. nonce=row-{i:02d}"}
        )
    if bad:
        (tmp / "images" / "text.png").write_text("not a picture")
        rows += [
            {"id": "missing", "image": "images/nope.jpg", "prompt": "Caption it."},
            {"id": "not-image", "image": "images/text.png", "prompt": "Caption it."},
            # over the 200k context of claude-haiku-4-5 (a token a word): the API refuses this row alone
            {"id": "too-long", "image": "images/g0.jpg", "prompt": "word " * 210_000},
            {"id": "id with spaces/and slashes", "image": "images/g1.jpg", "prompt": "Caption. nonce=odd"},
        ]
    with (tmp / "manifest.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    job = tmp / f"{mode}.toml"
    job.write_text(JOB.format(mode=mode, extra=extra, output=output, model=model))
    return job


def batches_created(sim: RunningSimulator) -> int:
    return requests_sent(sim, "POST /v1/messages/batches")


def test_good_and_bad_rows_in_batches_same_shape_as_online(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.3)))
    job = write_job(tmp_path, 7, bad=True, extra="batch_max_requests = 3", model="claude-haiku-4-5")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_ROW_ERRORS, err
    got = results_by_id(tmp_path / "out")
    assert len(got) == 11
    for i in range(7):
        row = got[f"row-{i:02d}"]
        assert row["status"] == "ok" and f"nonce=row-{i:02d}" in row["text"], row
        assert row["mode"] == "batch" and row["images"][0]["width"] == 300 + 10 * i
        assert row["cost_usd"] > 0 and row["attempts"] == 1
    assert got["id with spaces/and slashes"]["status"] == "ok"
    assert "nonce=odd" in got["id with spaces/and slashes"]["text"]
    assert got["missing"]["error_type"] == "not_found"
    assert got["not-image"]["error_type"] == "not_an_image"
    assert got["too-long"]["error_type"] == "invalid_request_error"
    assert "prompt is too long" in got["too-long"]["error_message"]
    # 9 requests reached batches: 3 a batch
    assert batches_created(sim) == 3
    led = sim.sim.ledger.snapshot()
    assert led["batch_input_tokens"] == led["input_tokens"] > 0
    with JobState.open(tmp_path / "out") as state:
        assert {b.status for b in state.list_batches()} == {"collected"}

    # A rerun sends nothing.
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_ROW_ERRORS and batches_created(sim) == 3, err
    # --retry-errors sends the row the API refused once more (and it is refused again), once.
    code, err = run_job(job, sim, monkeypatch, retry_errors=True)
    assert code == EXIT_ROW_ERRORS and batches_created(sim) == 4, err
    assert results_by_id(tmp_path / "out")["too-long"]["attempts"] == 2  # submissions, over all runs

    # The same job online: the same columns, the same outcome per row, twice the price.
    online = write_job(tmp_path, 7, mode="online", bad=True, output="out-online", model="claude-haiku-4-5")
    code, err = run_job(online, sim, monkeypatch)
    assert code == EXIT_ROW_ERRORS, err
    batch_table, online_table = read_results(tmp_path / "out"), read_results(tmp_path / "out-online")
    assert batch_table.schema == online_table.schema
    on = results_by_id(tmp_path / "out-online")
    assert {k: (v["status"], v["error_type"]) for k, v in on.items()} == {
        k: (v["status"], v["error_type"]) for k, v in got.items()
    }
    profile = load_registry()["claude-haiku-4-5"]
    for row_id, row in got.items():
        if row["status"] == "ok":
            assert row["input_tokens"] == on[row_id]["input_tokens"]
            usage = {"input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"]}
            assert row["cost_usd"] == pytest.approx(usage_cost(profile, usage, batch=True))
            half = usage_cost(profile, usage) * profile.prices.batch_discount
            assert row["cost_usd"] == pytest.approx(half)


def test_submit_and_exit_then_the_next_run_collects_and_submits_nothing(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.3)))
    now = [0.0]
    sim.sim.batches.clock = lambda: now[0]  # frozen: the batch cannot end until the test says so
    job = write_job(tmp_path, 5, extra="wait = false")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE, err
    assert "batcher run` again collects" in err
    with JobState.open(tmp_path / "out") as state:
        [batch] = state.list_batches()
        assert batch.request_count == 5 and batch.status == "in_progress"
        assert state.summary().by_status == {"batched": 5}
    # Still running: the next tick polls, submits nothing, exits 75 again.
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE and batches_created(sim) == 1, err
    release(sim)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert batches_created(sim) == 1
    assert {r["status"] for r in results_by_id(tmp_path / "out").values()} == {"ok"}
    listing = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "batches", str(tmp_path / "out"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    [entry] = json.loads(listing.stdout)
    assert entry["status"] == "collected" and entry["counts"]["succeeded"] == 5


def test_expired_requests_are_resubmitted(tmp_path: Path, make_simulator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.2, expire_share=0.25)))
    job = write_job(tmp_path, 8)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    got = results_by_id(tmp_path / "out")
    assert len(got) == 8 and {r["status"] for r in got.values()} == {"ok"}
    # 2 of 8 expired in the first batch and went again in a second (round(2 * 0.25) == 0 expire)
    assert batches_created(sim) == 2
    assert sorted(r["attempts"] for r in got.values()) == [1] * 6 + [2] * 2
    assert sim.sim.ledger.snapshot()["double_charged"] == []


def test_rows_that_keep_expiring_are_left_for_the_next_run(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.1, expire_share=1.0)))
    job = write_job(tmp_path, 3)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE, err
    assert batches_created(sim) == 3, "max_attempts = 3 submissions a row per run"
    sim.sim.config.batches.expire_share = 0.0
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert len(results_by_id(tmp_path / "out")) == 3


def test_the_budget_stops_submission_at_the_batch_price(tmp_path: Path, make_simulator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.1)))
    # ~$0.0000137 worst case a row at the batch price; room for 4 of 10
    job = write_job(tmp_path, 10, extra="\n[limits]\nbudget_usd = 0.00006")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_BUDGET, err
    got = results_by_id(tmp_path / "out")
    assert 0 < len(got) < 10
    assert sum(r["cost_usd"] for r in got.values()) <= 0.00006


def release(sim) -> None:  # type: ignore[no-untyped-def]
    """Unfreeze the batch clock, far ahead: frozen batches end, new ones run in real time."""
    sim.sim.batches.clock = lambda: time.monotonic() + 1000.0


def _cli(job: Path, sim, *args: str) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=sim.base_url)
    return subprocess.Popen(
        [sys.executable, "-m", "batcher.cli", *args, str(job)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def frozen(sim) -> list[float]:  # type: ignore[no-untyped-def]
    """Freeze the simulator's batch clock at 0: no batch moves until the test sets ``now[0]``."""
    now = [0.0]
    sim.sim.batches.clock = lambda: now[0]
    return now


def interrupt_while_waiting(job: Path, sim, now: list[float]) -> str:  # type: ignore[no-untyped-def]
    """``batcher run`` of a waiting batch job, SIGINT once its batch is half answered; its stderr."""
    proc = _cli(job, sim, "run")
    deadline = time.monotonic() + 30
    while batches_created(sim) == 0:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    now[0] = 0.5  # half of it answered
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_INCOMPLETE, err
    return err


def test_sigint_while_waiting_cancels_the_batch_and_the_rerun_finishes(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=1.0)))
    now = frozen(sim)
    job = write_job(tmp_path, 6)
    err = interrupt_while_waiting(job, sim, now)
    assert "cancelled batch" in err
    [batch] = sim.sim.batches.all()
    assert batch.cancel_at_s is not None
    release(sim)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    got = results_by_id(tmp_path / "out")
    assert len(got) == 6 and {r["status"] for r in got.values()} == {"ok"}
    assert batches_created(sim) == 2, "the canceled rows went again, the answered ones did not"
    assert sim.sim.ledger.snapshot()["double_charged"] == []


def test_batches_cancel_from_another_shell(tmp_path: Path, make_simulator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=1.0)))
    now = [0.0]
    sim.sim.batches.clock = lambda: now[0]
    job = write_job(tmp_path, 3, extra="wait = false")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE, err
    done = _cli(tmp_path / "out", sim, "batches", "--cancel")
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    assert "1 batch(es) cancelled" in err and "canceling" in out
    release(sim)
    # collects what the canceled batch answered, resubmits the rest and, waiting now, collects it
    job.write_text(job.read_text().replace("wait = false", "wait = true"))
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert len(results_by_id(tmp_path / "out")) == 3 and batches_created(sim) == 2


# --- batch mode with the Files transport -----------------------------------------------------------


def _files_batch_job(tmp: Path, questions: int, *, delete_at_end: bool) -> Path:
    (tmp / "images").mkdir(exist_ok=True)
    rows = []
    for i in range(4):
        Image.new("RGB", (400 + 10 * i, 300), (i * 50 % 256, 90, 140)).save(tmp / "images" / f"f{i}.jpg")
        for q in range(questions):
            rows.append(
                {
                    "id": f"img{i}-q{q}",
                    "image": f"images/f{i}.jpg",
                    "prompt": f"Question {q}. nonce=img{i}-q{q}",
                }
            )
    with (tmp / "manifest.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    extra = (
        '[images]\ntransport = "files"\nfiles_rpm = 6000\n'
        f"delete_files_at_end = {str(delete_at_end).lower()}\n"
    )
    job = tmp / "files-batch.toml"
    job.write_text(JOB.format(mode="batch", extra=extra, output="out", model="claude-haiku-5-5"))
    return job


def test_batch_mode_with_files_uploads_each_image_once_and_deletes_them_at_the_end(
    tmp_path: Path, make_simulator, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.2)))
    job = _files_batch_job(tmp_path, 3, delete_at_end=True)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    ledger = sim.sim.ledger.snapshot()
    assert sorted(ledger["uploads_by_hash"].values()) == [1, 1, 1, 1]
    out = results_by_id(tmp_path / "out")
    assert len(out) == 12 and {r["status"] for r in out.values()} == {"ok"}
    assert {r["mode"] for r in out.values()} == {"batch"}
    assert {r["images"][0]["transport"] for r in out.values()} == {"file"}
    assert "files: 4 uploaded" in err and "files: deleted 4" in err
    with JobState.open(tmp_path / "out") as state:
        assert state.list_files() == []
    assert sim.sim.files.live() == []


def test_batch_mode_uploads_again_a_file_id_the_api_no_longer_knows(
    tmp_path: Path, make_simulator, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.2)))
    job = _files_batch_job(tmp_path, 1, delete_at_end=False)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    with JobState.open(tmp_path / "out") as state:
        before = {f.sha256: f.file_id for f in state.list_files()}
    gone_hash, gone_id = sorted(before.items())[0]
    assert sim.sim.files.delete(gone_id)
    # More questions over the same images: the batch answers 404 for the rows on the gone file;
    # they are uploaded again and resubmitted in the same run, and answered.
    _files_batch_job(tmp_path, 3, delete_at_end=False)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    uploads = sim.sim.ledger.snapshot()["uploads_by_hash"]
    assert uploads == {h: 2 if h == gone_hash else 1 for h in before}
    out = results_by_id(tmp_path / "out")
    assert len(out) == 12 and {r["status"] for r in out.values()} == {"ok"}, {
        k: r["error_message"] for k, r in out.items() if r["status"] != "ok"
    }
    with JobState.open(tmp_path / "out") as state:
        after = {f.sha256: f.file_id for f in state.list_files()}
    assert after[gone_hash] != gone_id
    assert batches_created(sim) >= 3  # the first run's, the second run's, and the resubmission
