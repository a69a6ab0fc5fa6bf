"""The pipeline's stages in process, against the simulator on a real socket: how much it reads
ahead of a slow rate limit, and how fast a stop takes effect."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

from batcher import facts
from batcher.api.client import Client
from batcher.config import parse_job
from batcher.images.prepare import PreparedImage
from batcher.models import load_registry
from batcher.pipeline import Pipeline, hold_limit
from batcher.records import Row
from batcher.simulator.config import Latency, RateLimits, SimConfig
from tests.helpers import messages_sent

pytestmark = pytest.mark.anyio


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (256, 256), (40, 120, 200)).save(out, "JPEG", quality=85)
    return out.getvalue()


class CountingPool:
    """Prepares instantly and counts: what the pipeline asked to prepare is what it read ahead."""

    workers = 1

    def __init__(self) -> None:
        self.prepared = 0
        self.data = _jpeg()

    async def prepare(self, source: Any, profile: Any, options: Any, images_in_request: int = 1) -> Any:
        self.prepared += 1
        await anyio.sleep(0)
        return PreparedImage(
            data=self.data,
            media_type="image/jpeg",
            width=256,
            height=256,
            source_width=256,
            source_height=256,
            source_format="JPEG",
            tokens=facts.visual_tokens(256, 256),
            passthrough=True,
        )


class MemoryState:
    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.transient: list[str] = []
        self.meta: dict[str, Any] = {}
        self.last_recorded = 0.0

    def set_meta(self, key: str, value: Any) -> None:
        self.meta[key] = value

    def record(self, result: Any) -> None:
        self.results[result.id] = result
        self.last_recorded = time.time()

    def record_transient(self, row_id: str, *args: Any) -> None:
        self.transient.append(row_id)


class NoSink:
    def export(self, max_rows: int = 0) -> None:
        pass


def _rows(n: int) -> list[Row]:
    return [
        Row(id=f"r{i}", images=["a.jpg"], prompt=f"Describe. nonce=r{i}", fields={}, index=i)
        for i in range(n)
    ]


def _pipeline(client: Client, concurrency: int, pool: CountingPool, state: MemoryState) -> Pipeline:
    job = parse_job(
        {
            "input": {"manifest": "m.jsonl", "prompt": "{x}"},
            "request": {"model": "claude-haiku-5-5", "max_tokens": 16},
            "run": {"concurrency": concurrency},
        },
        Path("job.toml"),
    )
    profile = load_registry().get("claude-haiku-5-5")
    return Pipeline(job=job, profile=profile, client=client, state=state, sink=NoSink(), pool=pool)


def test_hold_limit() -> None:
    assert hold_limit(4, True, 2) == 9
    assert hold_limit(500, False, 2) == 5  # before the first answer: what the preparers make
    assert hold_limit(3, False, 4) == 3


async def test_concurrency_500_on_a_slow_key_reads_ahead_only_what_the_limits_let_through(
    make_simulator,
) -> None:  # type: ignore[no-untyped-def]
    # 60 RPM with a 2 s burst: one request a second. The old pipeline held 2 x concurrency
    # prepared rows (1,000 images in memory at concurrency 500) that would wait for minutes.
    sim = make_simulator(
        SimConfig(limits=RateLimits(rpm=60, burst_window_s=2.0), latency=Latency(base_s=0.05))
    )
    pool, state = CountingPool(), MemoryState()
    async with Client("k", sim.base_url, max_connections=16) as client:
        pipeline = _pipeline(client, 500, pool, state)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.run, _rows(2000))
            await anyio.sleep(4.0)
            read_ahead = pool.prepared - len(state.results)
            stopped_at = time.monotonic()
            pipeline.stop("test")
        took = time.monotonic() - stopped_at
    assert 1 <= len(state.results) <= 10
    # what the request stage holds plus the small buffer between the stages, far below 500
    assert read_ahead <= 40, read_ahead
    assert took < 2.0, f"stop took {took:.1f}s with rows waiting for the limits"
    assert messages_sent(sim) == len(state.results)  # nothing sent after the stop


async def test_stop_ends_retry_waits_at_once(make_simulator) -> None:  # type: ignore[no-untyped-def]
    from batcher.simulator.config import Faults

    # Every request fails with a 529: every row sits in a backoff between attempts.
    sim = make_simulator(SimConfig(faults=Faults(overloaded=1.0)))
    pool, state = CountingPool(), MemoryState()
    async with Client("k", sim.base_url, max_connections=8) as client:
        pipeline = _pipeline(client, 8, pool, state)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.run, _rows(50))
            with anyio.fail_after(10):
                while messages_sent(sim) < 8:
                    await anyio.sleep(0.02)
            stopped_at = time.monotonic()
            pipeline.stop("test")
        took = time.monotonic() - stopped_at
    assert took < 1.5, f"stop waited {took:.1f}s for backoffs to end"
    assert not state.results  # rows given up on are not errors: the next run sends them


async def test_the_limits_are_saved_as_the_run_ended(simulator) -> None:  # type: ignore[no-untyped-def]
    # batcher status shows this snapshot; taken only every 5 s during a run, a short run would
    # otherwise keep the picture of its first answer.
    pool, state = CountingPool(), MemoryState()
    async with Client("k", simulator.base_url, max_connections=4) as client:
        await _pipeline(client, 4, pool, state).run(_rows(12))
    assert len(state.results) == 12
    snapshot = state.meta["rate_limits"]
    assert snapshot["at"] >= round(state.last_recorded, 3) - 0.001 and snapshot["in_flight"] == 0
