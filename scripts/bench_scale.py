"""batcher at scale: a manifest of N rows (default 10,000,000) over 50 images, against the simulator.

Writes ``id,image,title`` CSV rows cycling over 50 small JPEGs, then, each as a real ``batcher``
subprocess against a fresh simulator subprocess (unlimited, zero latency):

- ``batcher estimate --json``: its wall time and the peak memory of its process tree;
- ``batcher run`` fresh: the time from the start of the command to its first ``/v1/messages``
  request (the simulator's ledger and this script share the system's monotonic clock), then rows
  answered per second over the first ``--seconds`` (60), then SIGTERM (a stop);
- ``batcher run`` again (resumed after that stop): the time to its first request, then SIGTERM;
- rows/s again over ``--rounds`` (3) fresh runs of each job, alternating between the two;
- the peak resident memory of the whole process tree (the run and its image workers, sampled from
  /proc every 0.2 s), and the job state's size on disk.

The same is done for a baseline manifest of ``--baseline-rows`` (100,000) in the same process, and
the ratios are printed side by side. Targets at 10M rows (issue 13): estimate within 60 s, first
request within 10 s fresh and resumed, peak memory within 400 MB, rows/s within 10% of the
baseline's.

    python scripts/bench_scale.py [--rows 10000000] [--baseline-rows 100000] [--seconds 60]
                                  [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from batcher.simulator.server import start_subprocess, stop_subprocess

IMAGES = 50
JOB = """
[input]
manifest = "manifest.csv"
id_column = "id"
image_column = "image"
prompt = "Write a one-line caption for {title}."

[request]
model = "claude-haiku-5-5"
max_tokens = 40

[run]
output = "out"
concurrency = 32
"""
TARGETS = {
    "estimate_s": 60.0,
    "first_fresh_s": 10.0,
    "first_resumed_s": 10.0,
    "peak_mb": 400.0,
    "rate_ratio": 0.9,
}


# --- inputs ---------------------------------------------------------------------------------------


def write_images(folder: Path) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(IMAGES):
        name = f"img{i:02d}.jpg"
        colour = (i * 5 % 256, i * 37 % 256, i * 91 % 256)
        Image.new("RGB", (320 + i, 240 + i), colour).save(folder / name, quality=85)
        names.append(f"images/{name}")
    return names


def write_manifest(path: Path, rows: int, images: list[str]) -> None:
    """``rows`` CSV rows, written in blocks so even 10M rows take seconds, not minutes."""
    block = 100_000
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("id,image,title\n")
        for start in range(0, rows, block):
            buf = io.StringIO()
            for i in range(start, min(rows, start + block)):
                buf.write(f"r{i},{images[i % IMAGES]},item {i}\n")
            out.write(buf.getvalue())


def make_job(folder: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images = write_images(folder / "images")
    write_manifest(folder / "manifest.csv", rows, images)
    job = folder / "job.toml"
    job.write_text(JOB)
    return job


# --- measuring a process tree ---------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_rss_mb(pid: int) -> float:
    kids = _children()
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@dataclass
class Watched:
    code: int
    wall_s: float
    peak_mb: float


def watch(
    proc: subprocess.Popen[bytes], started: float, *, stop_at: float | None = None, until: float = 3600.0
) -> Watched:
    """Wait for ``proc`` sampling its tree's memory; SIGTERM it at monotonic ``stop_at``."""
    peak, signalled = 0.0, False
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        now = time.monotonic()
        if stop_at is not None and now >= stop_at and not signalled:
            proc.send_signal(signal.SIGTERM)
            signalled = True
        if now - started > until:
            proc.kill()
        time.sleep(0.2)
    return Watched(proc.returncode, time.monotonic() - started, peak)


# --- the steps ------------------------------------------------------------------------------------


def env_for(url: str) -> dict[str, str]:
    return {**os.environ, "ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": url, "PYTHONUNBUFFERED": "1"}


def batcher(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "batcher.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT
    )


def estimate(job: Path, log: Path) -> tuple[float, float]:
    started = time.monotonic()
    proc = batcher("estimate", str(job), "--json", env={**os.environ, "PYTHONUNBUFFERED": "1"}, log=log)
    got = watch(proc, started)
    if got.code != 0:
        raise SystemExit(f"batcher estimate failed (exit {got.code}); see {log}")
    return got.wall_s, got.peak_mb


def ledger(url: str) -> dict:
    return httpx.get(f"{url}/_ledger", timeout=30).json()


def messages_sent(snapshot: dict) -> int:
    return sum(snapshot["requests"].get("POST /v1/messages", {}).values())


@dataclass
class RunFigures:
    first_request_s: float
    rows_per_s: float
    answered: int
    peak_mb: float
    code: int


def run_once(job: Path, seconds: float, log: Path) -> RunFigures:
    """``batcher run`` against a fresh simulator: time to the first request, then rows/s over
    ``seconds`` of sending, then SIGTERM."""
    url, sim = start_subprocess(["--seed", "1"])
    try:
        started = time.monotonic()
        proc = batcher("run", str(job), env=env_for(url), log=log)
        peak, first = 0.0, None
        while proc.poll() is None and first is None:
            peak = max(peak, tree_rss_mb(proc.pid))
            log_ = ledger(url)["message_log"]
            if log_:
                first = log_[0][0]
            else:
                time.sleep(0.1)
        if first is None:
            raise SystemExit(f"batcher run exited {proc.returncode} before any request; see {log}")
        got = watch(proc, started, stop_at=first + seconds, until=seconds + 600)
        entries = ledger(url)["message_log"]
        window = [t for t, status in entries if status == 200 and t <= first + seconds]
        return RunFigures(
            first_request_s=first - started,
            rows_per_s=len(window) / seconds,
            answered=len(window),
            peak_mb=max(peak, got.peak_mb),
            code=got.code,
        )
    finally:
        stop_subprocess(sim)


def state_mb(folder: Path) -> float:
    out = folder / "out"
    return sum(p.stat().st_size for p in out.glob("state.sqlite*")) / 1e6


@dataclass
class Figures:
    rows: int
    estimate_s: float
    estimate_peak_mb: float
    fresh: RunFigures
    resumed: RunFigures
    state_mb: float
    #: rows/s of every fresh run (the first, then one per extra round).
    rates: list[float]
    more_peak_mb: float = 0.0

    @property
    def peak_mb(self) -> float:
        return max(self.estimate_peak_mb, self.fresh.peak_mb, self.resumed.peak_mb, self.more_peak_mb)

    @property
    def rows_per_s(self) -> float:
        return sum(self.rates) / len(self.rates)


def measure(folder: Path, rows: int, seconds: float, resumed_seconds: float) -> Figures:
    t = time.monotonic()
    job = make_job(folder, rows)
    print(
        f"  wrote {rows:,} rows in {time.monotonic() - t:.1f} s "
        f"({(folder / 'manifest.csv').stat().st_size / 1e6:.0f} MB)",
        flush=True,
    )
    log = folder / "batcher.log"
    est_s, est_mb = estimate(job, log)
    print(f"  estimate {est_s:.1f} s, peak {est_mb:.0f} MB", flush=True)
    fresh = run_once(job, seconds, log)
    print(
        f"  fresh run: first request {fresh.first_request_s:.2f} s, {fresh.rows_per_s:.0f} rows/s, "
        f"peak {fresh.peak_mb:.0f} MB, exit {fresh.code}",
        flush=True,
    )
    resumed = run_once(job, resumed_seconds, log)
    print(
        f"  resumed run: first request {resumed.first_request_s:.2f} s, peak {resumed.peak_mb:.0f} MB, "
        f"exit {resumed.code}",
        flush=True,
    )
    return Figures(rows, est_s, est_mb, fresh, resumed, state_mb(folder), [fresh.rows_per_s])


def more_rounds(pairs: list[tuple[Path, Figures]], rounds: int, seconds: float) -> None:
    """Fresh runs again, alternating between the jobs: this machine's speed drifts by 10% and more
    from one minute to the next, so one run each would compare the drift, not the jobs."""
    for n in range(2, rounds + 1):
        for folder, figures in pairs:
            shutil.rmtree(folder / "out", ignore_errors=True)
            got = run_once(folder / "job.toml", seconds, folder / "batcher.log")
            figures.rates.append(got.rows_per_s)
            figures.more_peak_mb = max(figures.more_peak_mb, got.peak_mb)
            print(
                f"  round {n}, {figures.rows:,} rows: fresh run {got.rows_per_s:.0f} rows/s, "
                f"peak {got.peak_mb:.0f} MB",
                flush=True,
            )


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def report(big: Figures, base: Figures) -> list[str]:
    ratio = big.rows_per_s / base.rows_per_s if base.rows_per_s else 0.0
    lines = [
        f"{'figure':<34}{base.rows:>14,} rows{big.rows:>14,} rows{'ratio':>9}   target at {big.rows:,}",
        _line(
            "estimate, s",
            base.estimate_s,
            big.estimate_s,
            f"<= {TARGETS['estimate_s']:.0f} s",
            big.estimate_s <= TARGETS["estimate_s"],
        ),
        _line(
            "first request, fresh, s",
            base.fresh.first_request_s,
            big.fresh.first_request_s,
            f"<= {TARGETS['first_fresh_s']:.0f} s",
            big.fresh.first_request_s <= TARGETS["first_fresh_s"],
        ),
        _line(
            "first request, resumed, s",
            base.resumed.first_request_s,
            big.resumed.first_request_s,
            f"<= {TARGETS['first_resumed_s']:.0f} s",
            big.resumed.first_request_s <= TARGETS["first_resumed_s"],
        ),
        _line(
            f"rows/s, first minute, mean of {len(big.rates)}",
            base.rows_per_s,
            big.rows_per_s,
            f">= {TARGETS['rate_ratio']:.0%} of baseline",
            ratio >= TARGETS["rate_ratio"],
        ),
        _line(
            "peak memory of the tree, MB",
            base.peak_mb,
            big.peak_mb,
            f"<= {TARGETS['peak_mb']:.0f} MB",
            big.peak_mb <= TARGETS["peak_mb"],
        ),
        _line("state size, MB", base.state_mb, big.state_mb, "", None),
    ]
    return lines


def _line(name: str, base: float, big: float, target: str, ok: bool | None) -> str:
    ratio = f"{big / base:8.2f}x" if base else f"{'-':>9}"
    mark = "" if ok is None else f"  {verdict(ok)}"
    return f"{name:<34}{base:>19.2f}{big:>19.2f}{ratio}   {target}{mark}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--baseline-rows", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="Sending time measured per fresh run.")
    parser.add_argument("--resumed-seconds", type=float, default=5.0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="Fresh runs per job for rows/s, alternating between the two jobs.",
    )
    parser.add_argument("--dir", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    parser.add_argument("--json", action="store_true", help="Also print the figures as JSON.")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-scale-", dir=os.environ.get("TMPDIR")))
    try:
        print(f"baseline: {args.baseline_rows:,} rows", flush=True)
        base = measure(root / "baseline", args.baseline_rows, args.seconds, args.resumed_seconds)
        print(f"scale: {args.rows:,} rows", flush=True)
        big = measure(root / "scale", args.rows, args.seconds, args.resumed_seconds)
        more_rounds([(root / "baseline", base), (root / "scale", big)], args.rounds, args.seconds)
        print()
        for line in report(big, base):
            print(line)
        if args.json:
            from dataclasses import asdict

            print(json.dumps({"baseline": asdict(base), "scale": asdict(big)}, indent=2))
        return 0
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
