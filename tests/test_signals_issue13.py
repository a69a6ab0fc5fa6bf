"""Issue 13, defect 5: the first SIGINT/SIGTERM stops everything not yet sent within a second or
two: downloads and image preparation in flight are cancelled (their pool workers killed), only
requests already sent are awaited."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from batcher.api.client import Client
from batcher.images.pool import ImagePool, _run_task, _Task
from batcher.models import load_registry
from batcher.records import Row
from tests.helpers import batcher, good_rows, results_by_id, write_job
from tests.image_server import jpeg_bytes, serve_images
from tests.test_pipeline import MemoryState, _pipeline

#: The source a :func:`stuck_work` worker hangs on, as a decoder in a loop or a read that never ends.
STUCK = "stuck.jpg"


def stuck_work(task: _Task) -> tuple[Any, ...]:
    """A pool worker's work (runs in the worker process): hang on :data:`STUCK`, else the real thing."""
    if task.source == STUCK:
        time.sleep(600)
    return _run_task(task)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped by the thread that waited for it) is not running
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.anyio
async def test_a_cancelled_prepare_kills_its_worker_and_the_pool_goes_on() -> None:
    haiku = load_registry().get("claude-haiku-5-5")
    assert haiku is not None
    async with ImagePool(workers=1, work=stuck_work) as pool:
        pid = pool._idle[0].process.pid
        started = time.monotonic()
        with anyio.move_on_after(0.5):
            await pool.prepare(STUCK, haiku)
        assert time.monotonic() - started < 1.5  # not the 600 s the worker would take
        await anyio.sleep(0.5)
        assert pid is not None and not _alive(pid)
        # a new worker takes its place on the next call
        prepared = await pool.prepare(jpeg_bytes((300, 200)), haiku)
        assert prepared.width == 300 and pool._idle[0].process.pid != pid


class HangingPool:
    """A pool whose preparation never ends (a worker stuck on a FIFO, as before issue 13)."""

    workers = 1

    def __init__(self) -> None:
        self.calls = 0

    async def prepare(self, source: Any, profile: Any, options: Any, images_in_request: int = 1) -> Any:
        self.calls += 1
        await anyio.sleep_forever()


def _rows(images: list[str]) -> list[Row]:
    return [
        Row(id=f"r{i}", images=[image], prompt=f"Describe. nonce=r{i}", fields={}, index=i)
        for i, image in enumerate(images)
    ]


async def _stop_when(pipeline: Any, ready: Any, rows: list[Row]) -> float:
    """Run ``rows``, stop once ``ready()``; the seconds the stop took to end the run (callers bound
    the whole with ``fail_after``: before issue 13 the run never ended)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run, rows)
        while not ready():
            await anyio.sleep(0.02)
        stopped_at = time.monotonic()
        pipeline.stop("SIGTERM")
    return time.monotonic() - stopped_at


@pytest.mark.anyio
async def test_stop_cancels_image_preparation_in_flight(simulator) -> None:  # type: ignore[no-untyped-def]
    pool, state = HangingPool(), MemoryState()
    async with Client("k", simulator.base_url) as client:
        pipeline = _pipeline(client, 4, pool, state)  # type: ignore[arg-type]
        with anyio.fail_after(10):
            took = await _stop_when(pipeline, lambda: pool.calls >= 2, _rows(["a.jpg"] * 6))
    assert took < 1.5
    assert not state.results and not state.transient  # dropped: the next run prepares them again


@pytest.mark.anyio
async def test_stop_kills_pool_workers_and_cuts_downloads(simulator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Two stuck workers and a download dripping one byte every 2 s: the stop ends all three.
    state = MemoryState()
    with serve_images() as server:
        async with ImagePool(workers=2, work=stuck_work) as pool, Client("k", simulator.base_url) as client:
            pids = [w.process.pid for w in pool._idle]
            pipeline = _pipeline(client, 4, pool, state)  # type: ignore[arg-type]
            # A new pipeline for the changed job: the job is read when the pipeline is made.
            pipeline = replace(
                pipeline,
                job=pipeline.job.model_copy(
                    update={"images": pipeline.job.images.model_copy(update={"allow_private_urls": True})}
                ),
            )
            rows = _rows([STUCK, STUCK, f"{server.url}/drip"])
            with anyio.fail_after(15):
                took = await _stop_when(pipeline, lambda: pool._slots.value == 0 and server.hits, rows)
            assert took < 2.0, f"the stop took {took:.1f} s"
            await anyio.sleep(0.5)
            assert not any(_alive(pid) for pid in pids if pid is not None)
    assert not state.results


# --- end to end: `batcher run` and a signal ----------------------------------------------------------


def _unblock_fifos(folder: Path) -> None:
    """Give EOF to any reader still blocked on a FIFO (a worker of a run that failed the test)."""
    for fifo in folder.glob("pipe*.jpg"):
        with contextlib.suppress(OSError):  # no reader: nothing is blocked
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def _allow_private(job: Path, extra: str = "") -> None:
    with job.open("a") as fh:
        fh.write(f"\n[images]\nallow_private_urls = true\n{extra}")


@pytest.mark.parametrize(("signum", "fifos"), [(signal.SIGINT, 0), (signal.SIGTERM, 2)])
def test_the_first_signal_stops_a_run_stuck_on_a_slow_download(
    tmp_path: Path,
    simulator,
    signum: int,  # type: ignore[no-untyped-def]
    fifos: int,
) -> None:
    # An image served one byte every 2 s (and FIFOs that no one writes): before issue 13 the first
    # signal never took effect (a 60 s per-read timeout, no overall deadline; workers blocked on
    # the FIFOs), now the run exits 75 within a second or two.
    rows = good_rows(tmp_path, 2)
    for i in range(fifos):
        os.mkfifo(tmp_path / f"pipe{i}.jpg")
        rows.append({"id": f"fifo{i}", "image": f"pipe{i}.jpg", "kind": "photo"})
    with serve_images() as server:
        rows.append({"id": "drip", "image": f"{server.url}/drip", "kind": "photo"})
        job = write_job(tmp_path, rows, concurrency=2)
        _allow_private(job)
        proc = batcher(job, simulator, wait=False)
        assert isinstance(proc, subprocess.Popen)
        try:
            deadline = time.monotonic() + 60
            while not server.got_request.wait(0.1):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.3)
            started = time.monotonic()
            proc.send_signal(signum)
            _out, err = proc.communicate(timeout=20)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            _unblock_fifos(tmp_path)
    assert proc.returncode == 75, err
    assert took < 5, f"exit took {took:.1f} s after {signal.Signals(signum).name}"
    assert "Traceback" not in err
    done = results_by_id(tmp_path / "out") if (tmp_path / "out" / "results").exists() else {}
    assert "drip" not in done  # not answered: the next run downloads it again
    assert all(done[f"fifo{i}"]["error_type"] == "not_a_file" for i in range(fifos) if f"fifo{i}" in done)
