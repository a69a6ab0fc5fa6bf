"""Rate limits end to end: `batcher run` against a limited simulator, over real sockets.

The job sets no limits and a concurrency far above what the key allows; batcher must learn the
limit from the headers and sit on it: every row answered once, next to no 429s, few in flight.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from batcher.simulator.config import Latency, RateLimits, SimConfig
from tests.helpers import batcher, good_rows, results_by_id, write_job


def test_a_job_that_sets_nothing_sits_on_the_limit_without_storms(tmp_path: Path, make_simulator) -> None:  # type: ignore[no-untyped-def]
    # 120 requests a minute enforced over a 1 s window: two a second, and never two at once more.
    sim = make_simulator(
        SimConfig(
            limits=RateLimits(rpm=120, itpm=200_000, otpm=20_000, burst_window_s=1),
            latency=Latency(base_s=0.2),
        )
    )
    rows = good_rows(tmp_path, 20)
    job = write_job(tmp_path, rows, concurrency=64, max_attempts=8)

    done = batcher(job, sim)
    assert done.returncode == 0, done.stderr

    results = results_by_id(tmp_path / "out")
    assert set(results) == {r["id"] for r in rows}
    assert all(r["status"] == "ok" and f"nonce={r['id']}" in r["text"] for r in results.values())
    ledger = sim.sim.ledger.snapshot()
    statuses = ledger["requests"]["POST /v1/messages"]
    assert statuses.get("200") == len(rows)
    assert statuses.get("429", 0) <= 1, statuses  # the 64 workers of a semaphore would see hundreds
    assert ledger["double_charged"] == []
    # in flight follows throughput x latency (2 a second x 0.2 s), not the concurrency of 64
    assert ledger["peak_in_flight"] <= 4

    # the picture the run learned is kept for `batcher status`
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    shown = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "status", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "limits     120 rpm, 200k itpm, 20k otpm (API headers) | API left" in shown.stdout, shown.stdout


def test_an_unknown_tier_is_refused_before_anything_is_sent(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    job = write_job(tmp_path, good_rows(tmp_path, 2))
    job.write_text(job.read_text().replace("[run]\n", '[limits]\ntier = "tier-7"\n\n[run]\n'))
    done = batcher(job, simulator)
    assert done.returncode == 2
    assert "limits.tier: 'tier-7' is not a known tier" in done.stderr
    assert simulator.sim.ledger.snapshot()["requests"].get("POST /v1/messages") is None
