"""The Ray engine's driver: its decisions (pure), its refusals before anything is written, and
``batcher run --engine ray`` as a command: a local Ray instance of its own, Ctrl-C."""

from __future__ import annotations

import importlib.util
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from batcher.engines.ray_driver import (
    ClusterLimits,
    init_in_keeper,
    job_key,
    local_cpus,
    placement_problem,
)
from batcher.engines.ray_limiter import LimiterView
from batcher.exits import EXIT_CONFIG, EXIT_INCOMPLETE, EXIT_OK
from batcher.simulator.config import Latency, SimConfig
from tests.helpers import batcher, charges, good_rows, ray_job, results_by_id, run_job, write_job


def test_a_local_instance_declares_enough_cpus_for_every_worker() -> None:
    assert local_cpus(2, 1.0, 8) == 8
    assert local_cpus(4, 1.0, 2) == 4  # they mostly wait on the API: a small machine runs them
    assert local_cpus(3, 0.5, 1) == 2
    assert local_cpus(1, 1.0, None) == 1


def test_workers_a_local_instance_cannot_place_are_refused_at_once() -> None:
    assert placement_problem(4.0, 4, 1.0) is None
    assert placement_problem(2.0, 4, 0.5) is None
    assert placement_problem(2.0, 4, 1.0) == (
        "the local Ray instance has 2 CPUs; 4 workers of ray.worker_cpus = 1 need 4: lower "
        "ray.workers or ray.worker_cpus (a Ray this process already started keeps its CPUs)"
    )


def test_each_run_has_its_own_actor_names() -> None:
    a, b = job_key("/data/out"), job_key("/data/out")
    assert a != b and a.split("-")[0] == b.split("-")[0]  # the folder's part, then the run's
    assert job_key("/data/other").split("-")[0] != a.split("-")[0]


def test_the_drivers_picture_of_the_cluster_limits() -> None:
    limits = ClusterLimits()
    assert (limits.in_flight_limit(), limits.latency_s, limits.snapshot(), limits.describe()) == (
        1,
        None,
        {},
        "",
    )
    limits.view = LimiterView(12, 0.8, {"limits": {"requests": 240.0}, "source": "tier-1", "in_flight": 3})
    assert (limits.in_flight_limit(), limits.latency_s) == (12, 0.8)
    assert "240 rpm" in limits.describe()


class FakeRay:
    """``ray.init`` as far as :func:`init_in_keeper` sees it: which thread ran it, or its error."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.thread: threading.Thread | None = None
        self.options: dict[str, Any] = {}

    def init(self, **options: Any) -> None:
        self.thread = threading.current_thread()
        self.options = options
        if self.error is not None:
            raise self.error


def test_ray_is_started_on_a_thread_that_outlives_the_call() -> None:
    # A local instance's node processes die with the thread that started them (PR_SET_PDEATHSIG):
    # it must not be a worker thread that ends when idle.
    ray = FakeRay()
    caller = threading.Thread(target=init_in_keeper, args=(ray,), kwargs={"num_cpus": 4})
    caller.start()
    caller.join()
    assert ray.options == {"num_cpus": 4}
    assert ray.thread is not None and ray.thread is not caller
    time.sleep(0.2)
    assert ray.thread.is_alive() and ray.thread.daemon


def test_a_failed_start_is_raised_to_the_caller() -> None:
    with pytest.raises(ConnectionError, match="no cluster"):
        init_in_keeper(FakeRay(ConnectionError("no cluster")))


class HangingRay(FakeRay):
    """``ray.init`` at an address nothing answers at: it keeps trying."""

    def init(self, **options: Any) -> None:
        threading.Event().wait()


def test_a_start_that_never_answers_ends_in_a_timeout() -> None:
    with pytest.raises(TimeoutError, match="no answer within 0 s"):
        init_in_keeper(HangingRay(), timeout_s=0.2)


def test_without_ray_the_run_is_refused_naming_the_extra(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    job = ray_job(tmp_path, good_rows(tmp_path, 2))
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_CONFIG
    assert err.strip() == f'batcher: {job}: run.engine: "ray" needs Ray: pip install "batcher[ray]"'
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_engine_ray_with_batch_mode_is_one_line_exit_2(tmp_path: Path, simulator: Any) -> None:
    job = write_job(tmp_path, good_rows(tmp_path, 2))
    job.write_text(job.read_text().replace("[run]\n", '[run]\nmode = "batch"\n'))
    done = batcher(job, simulator, "--engine", "ray")
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.strip().endswith("(use one or the other)") and done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_command_starts_its_own_ray_and_ctrl_c_stops_every_workers_sends(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch, local_ray: Any
) -> None:
    pytest.importorskip("ray")
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.5)))
    job = write_job(tmp_path, good_rows(tmp_path, 60), concurrency=4)
    proc = batcher(job, sim, "--engine", "ray", wait=False)
    deadline = time.monotonic() + 120
    while sum(charges(sim).values()) < 8 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INCOMPLETE, err
    assert "Ray workers on a local Ray instance" in err
    # Nothing is sent once the run has stopped, and every answer paid for was recorded once.
    settled = sum(charges(sim).values())
    time.sleep(1.5)
    assert sum(charges(sim).values()) == settled < 60
    results = results_by_id(tmp_path / "out")
    assert charges(sim) == dict.fromkeys(results, 1)
    # The next run sends only the rest (here on the session's Ray: a second start costs seconds).
    code, err = run_job(job, sim, monkeypatch, engine="ray")
    assert code == EXIT_OK, err
    assert charges(sim) == dict.fromkeys(results_by_id(tmp_path / "out"), 1)
    assert len(results_by_id(tmp_path / "out")) == 60
