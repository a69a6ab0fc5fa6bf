"""Issue 13.7: the event loop never waits on disk. Parquet part writes and fsyncs, the state's
records and base64 encoding run in worker threads, so requests in flight keep being answered while
they run. Each test stalls one of them (a slow disk, a slow encoder) and watches the loop go on;
on the old code the loop stood still for the whole stall."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from batcher.api.client import Client
from batcher.core.outcomes import Counters
from batcher.core.prepare import B64_CHUNK, b64_text
from batcher.core.writer import Writer
from batcher.records import Row
from batcher.simulator.config import Latency, SimConfig
from batcher.sink import Sink, read_results
from batcher.state import JobState
from tests.test_pipeline import CountingPool, _pipeline, _rows

pytestmark = pytest.mark.anyio

STALL_S = 0.8


class Stall:
    """A stall of the disk or CPU, recorded as a window of wall-clock time."""

    def __init__(self) -> None:
        self.windows: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def __call__(self) -> None:
        start = time.monotonic()
        time.sleep(STALL_S)
        with self.lock:
            self.windows.append((start, time.monotonic()))

    def inside(self, stamps: list[float]) -> int:
        """How many of ``stamps`` fall well inside a stall (a margin either side)."""
        margin = 0.1
        return sum(1 for t in stamps for a, b in self.windows if a + margin < t < b - margin)


async def tick(stamps: list[float], stop: anyio.Event) -> None:
    """The event loop's heartbeat: a stamp every 10 ms while the loop is free to run it."""
    while not stop.is_set():
        stamps.append(time.monotonic())
        await anyio.sleep(0.01)


def open_state(tmp_path: Path, n: int) -> JobState:
    state = JobState.open(tmp_path / "out")
    state.sync_rows(_rows(n))
    return state


async def test_answers_keep_coming_while_a_part_is_written(make_simulator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A part's fsync that takes 0.8 s (a busy disk): rows answered meanwhile are still recorded.
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.02)))
    stall = Stall()
    answered: list[float] = []
    state = open_state(tmp_path, 60)
    sink = Sink(tmp_path / "out", state, on_step=lambda step: stall() if step == "written" else None)
    try:
        async with Client("k", sim.base_url, max_connections=4) as client:
            pipeline = _pipeline(client, 4, CountingPool(), state)  # type: ignore[arg-type]
            pipeline.sink = sink
            pipeline.job = pipeline.job.model_copy(
                update={"run": pipeline.job.run.model_copy(update={"part_rows": 10})}
            )
            pipeline.on_result = lambda _result: answered.append(time.monotonic())
            await pipeline.run(_rows(60))
        assert stall.windows, "no part was written during the run"
        assert stall.inside(answered) > 0, "no row was answered while a part was being written"
        ids = read_results(tmp_path / "out").column("id").to_pylist()
        assert sorted(ids) == sorted(r.id for r in _rows(60))  # every row once, none twice
    finally:
        state.close()


async def test_the_loop_runs_while_the_state_records(tmp_path: Path) -> None:
    class SlowState(JobState):
        stalled = False

        def record(self, result: Any, *, final: bool = True) -> None:
            if not SlowState.stalled:
                SlowState.stalled = True
                stall()
            super().record(result, final=final)

    from batcher.records import Result

    stall = Stall()
    state = SlowState.open(tmp_path / "out")
    state.sync_rows(_rows(3))
    stamps: list[float] = []
    stop = anyio.Event()
    try:
        writer = Writer(state, Sink(tmp_path / "out", state), Counters(), part_rows=1000)
        send, receive = anyio.create_memory_object_stream[Any](8)
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick, stamps, stop)
            async with send:
                for row in _rows(3):
                    await send.send(Result(id=row.id, status="ok", text="x"))
            await writer.write(receive)
            stop.set()
        assert stall.windows and stall.inside(stamps) > 0, "the loop stood still while a row was recorded"
        assert writer.counters.ok == 3 and state.summary().by_status == {"ok": 3}
    finally:
        state.close()


async def test_the_loop_runs_while_an_image_is_base64_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    stall = Stall()
    real = base64.b64encode

    def slow(data: Any) -> bytes:
        stall()
        return real(data)

    monkeypatch.setattr(base64, "b64encode", slow)
    pipeline = _pipeline(None, 4, CountingPool(), None)  # type: ignore[arg-type]
    stamps: list[float] = []
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(tick, stamps, stop)
        prepared = await pipeline.preparer.prepare_row(
            Row(id="r", images=["a.jpg"], prompt="p", fields={}, index=0)
        )
        stop.set()
    assert stall.inside(stamps) > 0, "the loop stood still while an image was encoded"
    monkeypatch.undo()
    assert prepared.parts[0].value == base64.b64encode(CountingPool().data).decode("ascii")


@pytest.mark.parametrize("size", [0, 1, 2, 3, B64_CHUNK - 1, B64_CHUNK, B64_CHUNK + 1, 3 * B64_CHUNK + 2])
def test_base64_in_pieces_is_the_same_encoding(size: int) -> None:
    data = bytes(i * 7 % 256 for i in range(size))
    assert b64_text(data) == base64.b64encode(data).decode("ascii")


def test_exports_from_several_threads_write_each_row_once(tmp_path: Path) -> None:
    # Exports now run in worker threads (the pipeline's writer, batch collection): the sink lets
    # one run at a time, or two would put the same rows into two parts.
    from batcher.records import Result

    with JobState.open(tmp_path / "out") as state:
        rows = _rows(300)
        state.sync_rows(rows)
        for row in rows:
            state.record(Result(id=row.id, status="ok", text="x" * 200))
        sink = Sink(tmp_path / "out", state)
        start = threading.Barrier(4)

        def export() -> None:
            start.wait()
            sink.export(max_rows=7)

        threads = [threading.Thread(target=export) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        ids = read_results(tmp_path / "out").column("id").to_pylist()
    assert sorted(ids) == sorted(r.id for r in rows)
