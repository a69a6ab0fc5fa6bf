"""How long the event loop stands still while results are written, before and after issue 13.7.

Every request in flight shares one event loop: while it waits on disk (a Parquet part written and
fsynced, a SQLite commit) or on the CPU (base64 of a 5 MB image), no answer is read and no request
is sent. This script measures that stall, in one process, both ways, and prints them side by side:

* ``before``: the writer as it was, recording each outcome and exporting each part on the loop,
  and base64 computed on the loop (:func:`old_write` and :func:`old_b64` below are copies of the
  old code, kept here as the baseline);
* ``after``: the real :meth:`batcher.core.writer.Writer.write` (records in a worker thread, exports
  in the background) and :func:`batcher.pipeline.b64_text` in a worker thread.

A heartbeat task asks to wake every millisecond; how late it wakes is the loop's stall. Both runs
write the same rows (a caption of a few hundred characters and a few manifest columns each) into a
real job state and real Parquet parts under a temporary folder.

    python scripts/bench_loop.py [--rows 20000] [--part-rows 5000] [--images 20] [--image-mb 5]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import ObjectReceiveStream

from batcher.config import parse_job
from batcher.core.writer import Writer
from batcher.models import load_registry
from batcher.pipeline import Outcome, Pipeline, Transient, b64_text
from batcher.records import Result, Row
from batcher.sink import Sink
from batcher.state import JobState

#: A stall is the heartbeat waking this much later than it asked; shorter ones are scheduling noise.
STALL_AT_S = 0.005
FIELDS = {"title": "string", "kind": "string", "page": "string"}


@dataclass
class Heartbeat:
    """Wakes every ``period_s`` and records when it woke and how late."""

    period_s: float = 0.001
    wakes: list[tuple[float, float]] = field(default_factory=list)

    async def run(self, stop: anyio.Event) -> None:
        while not stop.is_set():
            asked = time.perf_counter()
            await anyio.sleep(self.period_s)
            now = time.perf_counter()
            self.wakes.append((now, max(0.0, now - asked - self.period_s)))

    def stalls(self) -> list[tuple[float, float]]:
        """The intervals the loop stood still (a wake late by at least :data:`STALL_AT_S`)."""
        return [(now - late, now) for now, late in self.wakes if late >= STALL_AT_S]

    def figures(self, wall_s: float, busy: list[tuple[float, float]] | None = None) -> dict[str, float]:
        """Lateness overall; with ``busy`` windows (part writes), the stall inside them."""
        late = sorted(x for _, x in self.wakes) or [0.0]
        out = {
            "longest stall (ms)": late[-1] * 1000,
            "p99 lateness (ms)": late[min(len(late) - 1, int(len(late) * 0.99))] * 1000,
            "median lateness (ms)": statistics.median(late) * 1000,
        }
        if busy is not None:
            span = sum(b - a for a, b in busy)
            stalled = [overlap(s, w) for s in self.stalls() for w in busy]
            inside = sum(1 for now, _ in self.wakes if any(a <= now <= b for a, b in busy))
            out["time writing parts (s)"] = span
            out["loop stalled in it (%)"] = 100 * sum(stalled) / span if span else 0.0
            out["longest stall in it (ms)"] = max(stalled, default=0.0) * 1000
            out["loop wakes/s in it"] = inside / span if span else 0.0
        out["wall time (s)"] = wall_s
        return out


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


# --- the old code, as the baseline -----------------------------------------------------------------


async def old_write(pipeline: Pipeline, outcomes: ObjectReceiveStream[Outcome]) -> None:
    """``Pipeline._write`` before issue 13: the state and the sink called on the event loop."""
    every_rows, every_s = pipeline.job.run.part_rows, 30.0
    pending, last_export = 0, time.monotonic()
    async with outcomes:
        async for outcome in outcomes:
            if isinstance(outcome, Transient):
                pipeline.state.record_transient(
                    outcome.row_id, outcome.error_type, outcome.message, outcome.attempts
                )
                pipeline.counters.left_for_next_run += 1
                continue
            pipeline.state.record(outcome)
            pipeline.counters.add(outcome)
            pending += 1
            if pending >= every_rows or time.monotonic() - last_export > every_s:
                pipeline.sink.export(max_rows=every_rows)
                pending, last_export = 0, time.monotonic()
    with anyio.CancelScope(shield=True):
        pipeline.sink.export(max_rows=every_rows)


async def old_b64(data: bytes) -> str:
    """``Pipeline._prepare_row``'s encoding before issue 13: on the event loop."""
    return base64.b64encode(data).decode("ascii")


async def new_b64(data: bytes) -> str:
    return await anyio.to_thread.run_sync(b64_text, data)


# --- the two measurements ------------------------------------------------------------------------


def rows(n: int) -> list[Row]:
    return [
        Row(
            id=f"row-{i:08d}",
            images=["a.jpg"],
            prompt="Describe it.",
            index=i,
            fields={"title": f"Title {i}", "kind": "photo", "page": str(i % 400)},
        )
        for i in range(n)
    ]


def answer(row: Row) -> Result:
    text = f"A photograph of item {row.id}: " + "a quiet street in the rain, seen from above. " * 8
    return Result(
        id=row.id,
        status="ok",
        text=text,
        model="claude-haiku-5-5",
        stop_reason="end_turn",
        input_tokens=1600,
        output_tokens=90,
        attempts=1,
        latency_s=1.2,
        request_id="req_x",
        cost_usd=0.0021,
        fields=dict(row.fields),
    )


def pipeline_for(out: Path, part_rows: int, state: JobState) -> Pipeline:
    job = parse_job(
        {
            "input": {"manifest": "m.jsonl", "prompt": "{x}"},
            "request": {"model": "claude-haiku-5-5", "max_tokens": 100},
            "run": {"part_rows": part_rows},
        },
        Path("bench.toml"),
    )
    profile = load_registry().get("claude-haiku-5-5")
    return Pipeline(
        job=job,
        profile=profile,
        client=None,
        state=state,  # type: ignore[arg-type]
        sink=Sink(out, state, FIELDS),
        pool=None,
    )


async def measure_writes(out: Path, n: int, part_rows: int, old: bool) -> dict[str, float]:
    """Stream ``n`` answers into the writer (as the request stage does) and watch the loop."""
    batch = rows(n)
    state = JobState.open(out)
    try:
        state.sync_rows(batch)
        pipeline = pipeline_for(out, part_rows, state)
        busy: list[tuple[float, float]] = []
        export = pipeline.sink.export

        def timed_export(max_rows: int) -> int:
            started = time.perf_counter()
            try:
                return export(max_rows=max_rows)
            finally:
                busy.append((started, time.perf_counter()))

        pipeline.sink.export = timed_export  # type: ignore[method-assign]
        beat, stop = Heartbeat(), anyio.Event()
        send, receive = anyio.create_memory_object_stream[Outcome](64)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(beat.run, stop)

            async def produce() -> None:
                async with send:
                    for row in batch:
                        await send.send(answer(row))

            tg.start_soon(produce)
            assert pipeline.sink is not None
            writer = Writer(state, pipeline.sink, pipeline.counters, part_rows)
            await (old_write(pipeline, receive) if old else writer.write(receive))
            stop.set()
        wall = time.perf_counter() - started
        assert state.summary().exported_rows == n, "not every row was written"
    finally:
        state.close()
    return beat.figures(wall, [w for w in busy if w[1] - w[0] > 0.001])  # empty exports aside


async def measure_b64(images: int, size: int, encode: Callable[[bytes], Awaitable[str]]) -> dict[str, float]:
    data = os.urandom(size)
    beat, stop = Heartbeat(), anyio.Event()
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(beat.run, stop)
        for _ in range(images):
            await encode(data)
            await anyio.sleep(0.002)  # the loop's other work between two images
        stop.set()
    return beat.figures(time.perf_counter() - started)


async def measure_idle(seconds: float) -> dict[str, float]:
    beat, stop = Heartbeat(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(beat.run, stop)
        await anyio.sleep(seconds)
        stop.set()
    return beat.figures(seconds)


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def table(title: str, before: dict[str, float], after: dict[str, float]) -> str:
    lines = [title, f"  {'':<30}{'before':>11}{'after':>11}{'before/after':>14}"]
    for key, old in before.items():
        new = after[key]
        ratio = f"{old / new:.1f}x" if new > 0 else ("-" if old == 0 else "inf")
        lines.append(f"  {key:<30}{old:>11.2f}{new:>11.2f}{ratio:>14}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--part-rows", type=int, default=5000)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--image-mb", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the median is shown")
    args = parser.parse_args(argv)

    before_runs, after_runs = [], []
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        for i in range(args.repeat):  # alternated, so a busy moment of the machine hits both
            before_runs.append(
                anyio.run(measure_writes, Path(tmp) / f"before{i}", args.rows, args.part_rows, True)
            )
            after_runs.append(
                anyio.run(measure_writes, Path(tmp) / f"after{i}", args.rows, args.part_rows, False)
            )
    parts = -(-args.rows // args.part_rows)
    print(
        table(
            f"event loop while {args.rows:,} answers are recorded and written as {parts} Parquet "
            f"part(s) of {args.part_rows:,} rows, median of {args.repeat} runs\n"
            "(before: state and sink on the loop; after: worker threads)",
            median_of(before_runs),
            median_of(after_runs),
        )
    )
    size = int(args.image_mb * 1024 * 1024)
    b_before, b_after = [], []
    for _ in range(args.repeat):
        b_before.append(anyio.run(measure_b64, args.images, size, old_b64))
        b_after.append(anyio.run(measure_b64, args.images, size, new_b64))
    idle = [anyio.run(measure_idle, 1.0) for _ in range(args.repeat)]
    print()
    print(
        table(
            f"event loop while {args.images} images of {args.image_mb:g} MB are base64-encoded, "
            f"median of {args.repeat} runs\n(before: on the loop; after: a worker thread, in pieces)",
            median_of(b_before),
            median_of(b_after),
        )
    )
    print(
        f"\nfor scale, an idle loop on this machine: longest stall "
        f"{median_of(idle)['longest stall (ms)']:.2f} ms (other processes share the cores)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
