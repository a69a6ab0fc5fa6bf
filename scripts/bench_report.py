"""``batcher report`` at scale: a page over 100,000 results against one over 1,000 (the baseline).

Makes two output folders the way a run leaves them (the real job state and the real Sink writing
Parquet parts of 50,000 rows: ``JobState.record`` then ``Sink.export``), rows cycling over a few
hundred distinct small JPEGs (``--images``), ~5% of them error rows, answers of ~200 characters.
Then each report runs in a child process of its own (``batcher.report.build.write_report`` with the
real renderer), which says its wall time and the peak resident memory (``VmHWM``) of the report
process itself; the image workers' largest peak is read from ``RUSAGE_CHILDREN`` in that child.

Printed side by side, with the ratios: the full report (``--max-cards``, 2,000: the baseline's
1,000 rows give 1,000 cards), and the same report with no cards (``--max-cards 0``: the scan of
the results and the state alone, no thumbnail), so the time the row count costs is seen apart from
the time the thumbnails cost. Targets (issue 17): the 100k report's peak memory within ~1.5x of
the 1k one's, and its time dominated by the thumbnails, not the rows.

    python scripts/bench_report.py [--rows 100000] [--baseline-rows 1000] [--images 300]
                                   [--max-cards 2000] [--thumb-px 256] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CAPTION = (
    "a red bus on a wet street at dusk two people waiting under a shelter lit shop windows "
    "green hills under a pale sky a dog asleep by the door an empty beach at low tide"
)
WORDS = CAPTION.split(" ")


@dataclass(frozen=True, slots=True)
class Measured:
    seconds: float
    cards: int
    results: int
    bytes: int
    peak_kb: int
    worker_peak_kb: int


def make_images(folder: Path, n: int) -> list[str]:
    """``n`` distinct 1024x768 photo-like JPEGs (a gradient, shapes, grain)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = random.Random(i)
        image = Image.linear_gradient("L").resize((1024, 768)).convert("RGB")
        tint = Image.new("RGB", image.size, tuple(rng.randrange(256) for _ in range(3)))
        image = Image.blend(image, tint, 0.5)
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            x, y = rng.randrange(1024), rng.randrange(768)
            draw.ellipse(
                (x, y, x + rng.randrange(20, 300), y + rng.randrange(20, 300)),
                fill=tuple(rng.randrange(256) for _ in range(3)),
            )
        path = folder / f"img{i:04d}.jpg"
        image.save(path, quality=85)
        paths.append(str(path))
    return paths


def make_folder(out: Path, rows: int, images: list[str]) -> float:
    """An output folder of ``rows`` finished rows, as a run leaves it; returns the seconds taken."""
    from batcher.records import ImageSent, Result, Row
    from batcher.sink import Sink
    from batcher.state import JobState

    started = time.monotonic()
    rng = random.Random(rows)
    with JobState.open(out) as state:
        pass_id = state.begin_pass()
        chunk = 10_000
        for start in range(0, rows, chunk):
            ids = range(start, min(rows, start + chunk))
            batch = [
                Row(id=f"row-{i:07d}", images=[images[i % len(images)]], prompt="", fields={}, index=i)
                for i in ids
            ]
            state.sync_rows(batch, pass_id)
        sink = Sink(out, state, {})
        for i in range(rows):
            error = rng.random() < 0.05
            text = " ".join(rng.choice(WORDS) for _ in range(36))[:200]
            state.record(
                Result(
                    id=f"row-{i:07d}",
                    status="error" if error else "ok",
                    text=None if error else text,
                    model="claude-haiku-5-5",
                    stop_reason=None if error else "end_turn",
                    input_tokens=1_200 + rng.randrange(400),
                    output_tokens=0 if error else 40 + rng.randrange(60),
                    attempts=1 + (rng.random() < 0.1),
                    latency_s=rng.lognormvariate(0.3, 0.5),
                    error_type=rng.choice(("api_timeout", "decode_error", "overloaded_error"))
                    if error
                    else None,
                    error_message="gave up after 4 attempts" if error else None,
                    images=[ImageSent(source=images[i % len(images)], width=1024, height=768)],
                    warnings=["small_image"] if rng.random() < 0.02 else [],
                    cost_usd=0.0 if error else 0.0012 + rng.random() / 1000,
                )
            )
        state.end_pass(pass_id)
        sink.export(max_rows=50_000)
    return time.monotonic() - started


def child(out: str, dest: str, max_cards: int, thumb_px: int) -> None:
    """One report, in this process; prints what it measured as JSON."""
    from batcher.report.build import ReportOptions, write_report

    stats = write_report(Path(out), Path(dest), ReportOptions(max_cards=max_cards, thumb_px=thumb_px))
    peak_kb = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak_kb = int(line.split()[1])
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": stats.seconds,
                "cards": stats.cards,
                "results": stats.results,
                "bytes": stats.bytes,
                "peak_kb": peak_kb,
                "worker_peak_kb": workers,
            }
        )
    )


def measure(out: Path, max_cards: int, thumb_px: int) -> Measured:
    dest = out / f"report-{max_cards}.html"
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(out), str(dest), str(max_cards), str(thumb_px)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the report over {out} failed:\n{done.stderr}")
    return Measured(**json.loads(done.stdout.strip().splitlines()[-1]))


def line(label: str, m: Measured) -> str:
    per_card = f"{m.seconds / m.cards * 1000:6.1f} ms/card" if m.cards else " " * 14
    return (
        f"  {label:<24} {m.results:>9,} rows {m.cards:>6,} cards {m.seconds:7.2f} s {per_card}  "
        f"peak {m.peak_kb / 1024:6.1f} MB (workers {m.worker_peak_kb / 1024:5.1f} MB)  "
        f"page {m.bytes / 1e6:5.1f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=1_000)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--max-cards", type=int, default=2000)
    parser.add_argument("--thumb-px", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=None, help="Work here (reused if it holds the folders).")
    parser.add_argument("--keep", action="store_true", help="Keep the folders and pages.")
    parser.add_argument(
        "--child", nargs=4, metavar=("OUT", "DEST", "MAX_CARDS", "THUMB_PX"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        out, dest, max_cards, thumb_px = args.child
        child(out, dest, int(max_cards), int(thumb_px))
        return

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench_report-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        images = sorted(str(p) for p in (work / "images").glob("img*.jpg"))
        if len(images) != args.images:
            images = make_images(work / "images", args.images)
        folders = {}
        for rows in (args.baseline_rows, args.rows):
            out = work / f"out-{rows}"
            if not (out / "state.sqlite").is_file():
                print(f"making {rows:,} rows ... ", end="", flush=True)
                print(f"{make_folder(out, rows, images):.1f} s")
            folders[rows] = out
        print(
            f"batcher report: {args.rows:,} rows vs {args.baseline_rows:,} (baseline); "
            f"{args.images} distinct images 1024x768, ~5% error rows, thumbnails {args.thumb_px} px, "
            f"renderer batcher.report.render"
        )
        base = measure(folders[args.baseline_rows], args.max_cards, args.thumb_px)
        big = measure(folders[args.rows], args.max_cards, args.thumb_px)
        base_scan = measure(folders[args.baseline_rows], 0, args.thumb_px)
        big_scan = measure(folders[args.rows], 0, args.thumb_px)
        print(line("baseline, full report", base))
        print(line("large, full report", big))
        print(line("baseline, no cards", base_scan))
        print(line("large, no cards", big_scan))
        print(
            f"  ratios large/baseline: peak memory {big.peak_kb / base.peak_kb:.2f}x (target <= 1.5x), "
            f"time {big.seconds / base.seconds:.2f}x for {big.cards / max(1, base.cards):.2f}x the cards "
            f"and {big.results / max(1, base.results):.0f}x the rows"
        )
        scan_share = big_scan.seconds / big.seconds
        print(
            f"  the {big.results:,}-row scan without cards takes {big_scan.seconds:.2f} s, "
            f"{scan_share:.0%} of the full report's {big.seconds:.2f} s: the rest is the "
            f"{big.cards:,} thumbnails and cards"
        )
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
