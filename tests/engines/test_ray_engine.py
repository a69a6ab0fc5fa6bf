"""The Ray engine end to end (batcher.engines.ray_driver and ray_worker): a local Ray instance, the
simulator through real sockets, the job run as ``batcher run`` runs it. The simulator's ledger is
the witness: what it charged, row by row, against what the results hold."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from batcher.exits import EXIT_BUDGET, EXIT_FATAL, EXIT_OK
from batcher.simulator.config import Latency, RateLimits, SimConfig
from tests.helpers import (
    UNLIMITED,
    answer_visible_cache,
    cached_job,
    charges,
    good_rows,
    ray_job,
    ray_workers,
    results_by_id,
    run_job,
)

pytest.importorskip("ray")


def test_every_row_is_answered_once_and_recorded_by_the_driver(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch, local_ray: Any
) -> None:
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.05)))
    job = ray_job(tmp_path, good_rows(tmp_path, 30), workers=2)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert "2 Ray workers on a local Ray instance" in err
    results = results_by_id(tmp_path / "out")
    assert sorted(results) == [f"row-{i:03d}" for i in range(30)]
    assert all(r["status"] == "ok" and r["text"] for r in results.values())
    # Each answer is the one the simulator gave for that row (it echoes the row's nonce).
    assert all(f"nonce={i}" in r["text"] for i, r in results.items())
    assert charges(sim) == dict.fromkeys(results, 1)
    # The workers are gone with the run; the next run has nothing to send.
    assert ray_workers(local_ray) == []
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert charges(sim) == dict.fromkeys(results, 1)


def test_a_worker_killed_mid_run_loses_only_its_rows_in_flight(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch, local_ray: Any
) -> None:
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.4)))
    concurrency = 8
    job = ray_job(tmp_path, good_rows(tmp_path, 40), workers=2, concurrency=concurrency)
    killed: list[str] = []

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 60
        while sum(charges(sim).values()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = ray_workers(local_ray)
        if workers:
            local_ray.kill(workers[0])
            killed.append("one")

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    code, err = run_job(job, sim, monkeypatch)
    killer.join()
    assert killed, "no worker was running to kill"
    assert code == EXIT_OK, err
    assert "died; its rows in flight go to another" in err
    results = results_by_id(tmp_path / "out")
    assert len(results) == 40 and all(r["status"] == "ok" for r in results.values())
    paid = charges(sim)
    assert set(paid) == set(results)
    # Only rows that were on the wire when their worker died may be paid twice: at most a
    # worker's share of the rows out at once.
    twice = [row for row, n in paid.items() if n > 1]
    assert all(paid[row] == 2 for row in twice)
    assert len(twice) <= concurrency


def test_one_budget_for_every_worker(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch, local_ray: Any
) -> None:
    # Each worker alone could spend the whole budget: together they must not spend more than it.
    budget = 0.0004
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.05)))
    job = ray_job(tmp_path, good_rows(tmp_path, 40), workers=2, extra=f"[limits]\nbudget_usd = {budget}\n")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_BUDGET, err
    assert "stopped by the budget" in err
    results = results_by_id(tmp_path / "out")
    assert 0 < len(results) < 40
    spent = sum(r["cost_usd"] for r in results.values())
    assert spent <= budget
    # Every paid request was recorded, once.
    assert charges(sim) == dict.fromkeys(results, 1)


def test_one_rate_limit_for_every_worker(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch, local_ray: Any
) -> None:
    # 120 RPM with a 1 s burst window: two requests a second, as the API punishes bursts. Two
    # workers each pacing themselves to 120 RPM would send twice that and meet 429s.
    limits = RateLimits(rpm=120, burst_window_s=1.0)
    sim = make_simulator(SimConfig(limits=limits, latency=Latency(base_s=0.1)))
    job = ray_job(tmp_path, good_rows(tmp_path, 16), workers=2, extra="[limits]\nrpm = 120\n")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert len(results_by_id(tmp_path / "out")) == 16
    statuses = sim.sim.ledger.snapshot()["requests"]["POST /v1/messages"]
    assert statuses.get("429", statuses.get(429, 0)) <= 1, statuses


def test_more_workers_than_the_local_instance_holds_is_one_line_at_once(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch, local_ray: Any
) -> None:
    cpus = local_ray.cluster_resources()["CPU"]
    job = ray_job(tmp_path, good_rows(tmp_path, 3), workers=int(cpus) + 4)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_FATAL, err
    assert f"batcher: stopped: the local Ray instance has {cpus:g} CPUs; {int(cpus) + 4} workers" in err
    assert charges(simulator) == {}
    assert ray_workers(local_ray) == []


def test_the_cached_prefix_is_written_once_for_the_whole_cluster(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch, local_ray: Any
) -> None:
    # The simulator shows a cache entry only once the request that wrote it has answered (as the
    # API does): two workers each letting a first request go would pay for two writes.
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.2)))
    answer_visible_cache(sim, 0.2)
    job = cached_job(tmp_path, good_rows(tmp_path, 24), concurrency=16, extra=UNLIMITED)
    text = job.read_text().replace("[run]\n", '[run]\nengine = "ray"\n')
    job.write_text(text + "\n[ray]\nworkers = 2\n")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    results = results_by_id(tmp_path / "out")
    writes = [i for i, r in results.items() if (r["cache_creation_input_tokens"] or 0) > 0]
    reads = [i for i, r in results.items() if (r["cache_read_input_tokens"] or 0) > 0]
    assert len(writes) == 1 and len(reads) == 23
    assert "batcher: cache: 23 of 24 requests read the prefix (95%)" in err
