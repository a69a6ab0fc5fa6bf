"""Benchmark: a few-shot job with the prompt cache (``[cache] mode = "auto"``) and without it
(``"off"``), side by side in one process, each against a fresh in-process simulator on loopback.

The job is the shipped ``jobs/fewshot.toml`` (a long instruction and three worked examples) over
``--rows`` generated images (not the examples), run by ``batcher run`` in this process. The
simulator answers with ``--latency`` seconds of latency and enforces an ITPM limit (``--itpm``, a
1 s burst window), so the cache's effect on speed shows too: cache reads do not count toward ITPM.

Prints, per variant: input cost (fresh input, cache reads and writes, each at its price), total
cost, wall time, the cache hit rate and the simulator's 429s; then the ratios and whether the
target holds: input cost at least 70% lower with the cache (issue 16).

    python scripts/bench_cache.py [--rows 200] [--itpm 1200000] [--latency 0.3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from batcher.commands.run import run
from batcher.cost import usage_cost
from batcher.models import load_registry
from batcher.runner import RunRequest
from batcher.simulator.config import Latency, RateLimits, SimConfig
from batcher.simulator.server import start_in_thread
from batcher.state import JobState

REPO = Path(__file__).resolve().parents[1]
FEWSHOT = REPO / "jobs" / "fewshot.toml"
TARGET_INPUT_SAVING = 0.70


@dataclass
class Figures:
    input_usd: float
    total_usd: float
    seconds: float
    hit_rate: float | None
    rows_ok: int
    rate_limited: int


def write_images(folder: Path, n: int) -> list[str]:
    """``n`` distinct small photos-to-be (flat colours with a band), as a manifest refers to them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        img = Image.new("RGB", (480, 360), (i * 37 % 256, i * 91 % 256, i * 53 % 256))
        img.paste((255 - i % 256, 128, i * 7 % 256), (0, 150, 480, 210))
        img.save(folder / f"row{i:04d}.jpg", quality=88)
        names.append(f"bench_images/row{i:04d}.jpg")
    return names


def job_for(tmp: Path, rows: int, mode: str) -> Path:
    """The shipped few-shot job with ``[cache] mode`` over a manifest of ``rows`` generated images."""
    names = write_images(tmp / "bench_images", rows)
    with (tmp / "manifest.jsonl").open("w") as fh:
        for i, name in enumerate(names):
            fh.write(json.dumps({"id": f"r{i:04d}", "image": name}) + "\n")
    for item in FEWSHOT.parent.iterdir():
        if item.is_dir() and item.name != "schemas":
            shutil.copytree(item, tmp / item.name, dirs_exist_ok=True)
    text = FEWSHOT.read_text()
    text = re.sub(r"(?m)^manifest\s*=.*$", 'manifest = "manifest.jsonl"', text)
    text = re.sub(r"(?m)^id_column\s*=.*$", 'id_column = "id"', text)
    text = re.sub(r"(?m)^image_column\s*=.*$", 'image_column = "image"', text)
    text = re.sub(r"(?m)^output\s*=.*$", 'output = "out"', text)
    text = re.sub(r"(?ms)^\[cache\].*?(?=^\[|\Z)", "", text)
    job = tmp / "job.toml"
    job.write_text(text + f'\n[cache]\nmode = "{mode}"\n')
    return job


def run_variant(mode: str, rows: int, itpm: float, latency: float) -> Figures:
    sim = start_in_thread(
        SimConfig(latency=Latency(base_s=latency), limits=RateLimits(itpm=itpm, burst_window_s=1.0))
    )
    try:
        with tempfile.TemporaryDirectory(prefix=f"bench_cache_{mode}_") as tmp_name:
            tmp = Path(tmp_name)
            job = job_for(tmp, rows, mode)
            os.environ["ANTHROPIC_API_KEY"] = "bench-key"
            os.environ["ANTHROPIC_BASE_URL"] = sim.base_url
            err = io.StringIO()
            started = time.monotonic()
            code = run(RunRequest(job_path=job), err=err, out=io.StringIO())
            seconds = time.monotonic() - started
            if code != 0:
                print(err.getvalue(), file=sys.stderr)
                raise SystemExit(f"bench_cache: the {mode} run exited {code}")
            figures = _figures(tmp / "out", seconds, sim)
    finally:
        sim.stop()
    return figures


def _figures(out: Path, seconds: float, sim: Any) -> Figures:
    from batcher.sink import read_results

    ids = [r["id"] for r in read_results(out).to_pylist()]
    input_usd = 0.0
    with JobState.open(out) as state:
        summary = state.summary()
        for row_id in ids:
            r = state.get_result(row_id)
            if r is None or r.model is None:
                continue
            profile = load_registry().get(r.model)
            usage = {
                "input_tokens": r.input_tokens or 0,
                "output_tokens": 0,
                "cache_read_input_tokens": r.cache_read_input_tokens or 0,
                "cache_creation_input_tokens": r.cache_creation_input_tokens or 0,
            }
            input_usd += usage_cost(profile, usage)
    requests = sim.sim.ledger.snapshot()["requests"].get("POST /v1/messages", {})
    return Figures(
        input_usd=input_usd,
        total_usd=summary.cost_usd,
        seconds=seconds,
        hit_rate=summary.cache_hit_rate,
        rows_ok=summary.by_status.get("ok", 0),
        rate_limited=int(requests.get("429", 0)),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--itpm", type=float, default=1_200_000)
    parser.add_argument("--latency", type=float, default=0.3)
    args = parser.parse_args()
    auto = run_variant("auto", args.rows, args.itpm, args.latency)
    off = run_variant("off", args.rows, args.itpm, args.latency)
    print(
        f"job: {FEWSHOT.relative_to(REPO)}; {args.rows} generated rows; "
        f"ITPM {args.itpm:,.0f}; latency {args.latency} s"
    )
    heads = ("rows ok", 8), ("input $", 10), ("total $", 10), ("time s", 8), ("hit rate", 9), ("429s", 5)
    print(f"{'cache':<6} " + " ".join(f"{h:>{w}}" for h, w in heads))
    for name, f in (("auto", auto), ("off", off)):
        rate = "-" if f.hit_rate is None else f"{f.hit_rate:.1%}"
        print(
            f"{name:<6} {f.rows_ok:>8} {f.input_usd:>10.5f} {f.total_usd:>10.5f} {f.seconds:>8.1f} "
            f"{rate:>9} {f.rate_limited:>5}"
        )
    saving = 1 - auto.input_usd / off.input_usd if off.input_usd else 0.0
    total_saving = 1 - auto.total_usd / off.total_usd if off.total_usd else 0.0
    print(
        f"input cost {saving:.1%} lower with the cache; total cost {total_saving:.1%} lower; "
        f"time {off.seconds / auto.seconds:.2f}x faster"
    )
    met = saving >= TARGET_INPUT_SAVING and auto.rows_ok == off.rows_ok == args.rows
    print(f"target (input cost at least {TARGET_INPUT_SAVING:.0%} lower): {'MET' if met else 'NOT MET'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
