"""Does a Ray cluster share one rate budget? One process against ``--engine ray``, side by side.

The same job (``ROWS`` rows of small generated images) runs three times, each against a fresh
simulator subprocess limited to 240 requests a minute (1 s latency, a 5 s burst window: the API
punishes bursts): once in one process (``engine = "local"``), then on a local Ray instance with 2
and with 4 workers. Every run is a whole ``batcher.run`` (manifest, state, results); the Ray runs
share one local Ray instance of 4 CPUs, started first, as a notebook would (an engine joins the
instance its process already has). The simulator's ledger is the witness: the steady share of the
limit reached (answers per minute after a warm-up, over the limit), the share of requests answered
429, and whether every row was charged exactly once.

    python scripts/bench_ray.py [--rows N]

Target (issue 18), for the Ray runs: at least 95% of the limit, at most 2% of requests 429, every
row exactly once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from PIL import Image

from batcher.simulator.server import start_subprocess, stop_subprocess

RPM: Final = 240
LATENCY_S: Final = 1.0
BURST_WINDOW_S: Final = 5.0
#: Seconds after the first answer before throughput counts (the API's bucket starts full).
WARMUP_S: Final = 10.0
TARGET_SHARE, TARGET_429 = 0.95, 0.02
ROWS: Final = 300

JOB: Final = """
[input]
manifest = "manifest.csv"
id_column = "id"
image_column = "image"
prompt = "Describe this image in one line. nonce={{id}}"

[request]
model = "claude-haiku-5-5"
max_tokens = 64

[run]
output = "out"
concurrency = 16
engine = "{engine}"

[ray]
workers = {workers}
"""


@dataclass(frozen=True)
class Figures:
    name: str
    rows: int
    answered: int
    share: float | None
    rate_limited: float
    requests: int
    twice: int
    missing: int
    wall_s: float

    def meets(self) -> bool:
        return (
            self.share is not None
            and self.share >= TARGET_SHARE
            and self.rate_limited <= TARGET_429
            and self.twice == 0
            and self.missing == 0
            and self.answered == self.rows
        )


def make_job(folder: Path, rows: int, engine: str, workers: int) -> Path:
    images = folder / "images"
    images.mkdir(parents=True)
    lines = ["id,image"]
    for i in range(rows):
        Image.new("RGB", (200 + i % 50, 150), (i % 256, 80, 160)).save(images / f"{i:05d}.jpg", quality=85)
        lines.append(f"row-{i:05d},images/{i:05d}.jpg")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    job = folder / "job.toml"
    job.write_text(JOB.format(engine=engine, workers=workers))
    return job


def run_one(name: str, rows: int, engine: str, workers: int) -> Figures:
    import batcher

    args = ["--rpm", str(RPM), "--burst-window", str(BURST_WINDOW_S), "--latency", str(LATENCY_S)]
    url, proc = start_subprocess(args)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            job = make_job(Path(tmp), rows, engine, workers)
            os.environ["ANTHROPIC_API_KEY"] = "bench"
            os.environ["ANTHROPIC_BASE_URL"] = url
            started = time.monotonic()
            summary = batcher.run(job)
            wall = time.monotonic() - started
            ledger: dict[str, Any] = httpx.get(f"{url}/_ledger", timeout=30).json()
    finally:
        stop_subprocess(proc)
    return figures(name, rows, summary.ok, ledger, wall)


def figures(name: str, rows: int, answered: int, ledger: dict[str, Any], wall: float) -> Figures:
    statuses = Counter({int(k): v for k, v in ledger["requests"].get("POST /v1/messages", {}).items()})
    requests = sum(statuses.values())
    ok_times = sorted(t for t, status in ledger["message_log"] if status == 200)
    share = None
    if len(ok_times) > 2:
        start = ok_times[0] + WARMUP_S
        steady = [t for t in ok_times if t > start]
        if len(steady) > 1 and steady[-1] - steady[0] >= WARMUP_S:
            share = (len(steady) - 1) / (steady[-1] - steady[0]) * 60 / RPM
    paid: dict[str, int] = ledger["charges_by_nonce"]
    twice = sum(1 for n in paid.values() if n > 1)
    missing = rows - len(paid)
    return Figures(
        name, rows, answered, share, statuses[429] / max(1, requests), requests, twice, missing, wall
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    args = parser.parse_args()
    print(
        f"{args.rows} rows at {RPM} RPM ({LATENCY_S:g} s latency, {BURST_WINDOW_S:g} s burst window), "
        f"steady share after {WARMUP_S:g} s"
    )
    import logging

    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    runs = [("one process", "local", 1), ("ray, 2 workers", "ray", 2), ("ray, 4 workers", "ray", 4)]
    results = [run_one(name, args.rows, engine, workers) for name, engine, workers in runs]
    head = f"  {'engine':<16}{'answered':>10}{'of limit':>10}{'429s':>8}"
    print(head + f"{'requests':>10}{'twice':>7}{'wall s':>8}")
    for f in results:
        share = "n/a" if f.share is None else f"{f.share * 100:.1f}%"
        print(
            f"  {f.name:<16}{f.answered:>5}/{f.rows:<4}{share:>10}{f.rate_limited * 100:>7.1f}%"
            f"{f.requests:>10}{f.twice:>7}{f.wall_s:>8.1f}"
        )
    met = all(f.meets() for f in results[1:])
    print(
        f"target for the Ray runs (>= {TARGET_SHARE:.0%} of the limit, <= {TARGET_429:.0%} 429s, "
        f"every row exactly once): {'MET' if met else 'NOT MET'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
