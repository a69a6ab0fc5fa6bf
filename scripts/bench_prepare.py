"""Benchmark: batcher's image preparation against a plain Pillow pipeline, side by side in one run.

Both prepare the same 12 MP photo-like JPEGs (gradients, shapes and grain, 4000x3000, half of them
with an EXIF rotation: 6, 3 and 8 in turn, see ``ORIENTATIONS``) for ``claude-haiku-5-5``, at the same
output size (the model's native size):

* plain: what a user would write, one process: full decode, ``ImageOps.exif_transpose``, RGB,
  LANCZOS to the size, JPEG q85;
* batcher: ``ImagePool`` over every core (DCT-scaled decode, resize before rotating, JPEG q85).

Prints both throughputs, their ratio (target: at least 2.5x on 2 cores) and the PSNR of batcher's
outputs against the plain pipeline's (target: at least 35 dB).

    python scripts/bench_prepare.py [--images 16] [--rounds 2] [--workers N]
"""

from __future__ import annotations

import argparse
import io
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import anyio
from PIL import Image, ImageChops, ImageDraw, ImageOps, ImageStat

from batcher.images.pool import ImagePool, default_workers
from batcher.models import ModelProfile, load_registry

SIZE = (4000, 3000)
ORIENTATIONS = (1, 6, 1, 3, 1, 8)


def photo_jpeg(index: int) -> bytes:
    """A deterministic photo-like 12 MP JPEG: smooth colour gradients, shapes, per-pixel grain."""
    rng = random.Random(index)
    small = (400, 300)
    bands = [Image.linear_gradient("L").rotate(rng.randrange(360)).resize(small) for _ in range(3)]
    image = Image.merge("RGB", bands).resize(SIZE, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(SIZE[0]), rng.randrange(SIZE[1])
        x1, y1 = x0 + rng.randrange(50, 1200), y0 + rng.randrange(50, 900)
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    grain = Image.effect_noise(SIZE, 18).convert("RGB")
    image = ImageChops.add(image, grain, scale=1.0, offset=-128)
    exif = Image.Exif()
    orientation = ORIENTATIONS[index % len(ORIENTATIONS)]
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def plain_pipeline(path: Path, profile: ModelProfile) -> bytes:
    """The baseline a user would write."""
    with Image.open(path) as image:
        image.load()
        upright = ImageOps.exif_transpose(image).convert("RGB")
    size = profile.native_size(*upright.size)
    resized = upright.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    resized.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def psnr(a: bytes, b: bytes) -> float:
    first, second = Image.open(io.BytesIO(a)).convert("RGB"), Image.open(io.BytesIO(b)).convert("RGB")
    if first.size != second.size:
        raise SystemExit(f"output sizes differ: {first.size} vs {second.size}")
    mse = sum(v * v for v in ImageStat.Stat(ImageChops.difference(first, second)).rms) / 3
    return 10 * math.log10(255**2 / max(mse, 1e-12))


def run_plain(paths: list[Path], profile: ModelProfile) -> tuple[float, list[bytes]]:
    started = time.perf_counter()
    outputs = [plain_pipeline(path, profile) for path in paths]
    return time.perf_counter() - started, outputs


async def run_batcher(paths: list[Path], profile: ModelProfile, pool: ImagePool) -> tuple[float, list[bytes]]:
    outputs: list[bytes] = [b""] * len(paths)

    async def one(index: int) -> None:
        outputs[index] = (await pool.prepare(paths[index], profile)).data

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for index in range(len(paths)):
            group.start_soon(one, index)
    return time.perf_counter() - started, outputs


async def main_async(args: argparse.Namespace) -> int:
    profile = load_registry()["claude-haiku-5-5"]
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        paths = []
        for index in range(args.images):
            path = Path(tmp) / f"photo_{index:02d}.jpg"
            path.write_bytes(photo_jpeg(index))
            paths.append(path)
        started = time.perf_counter()
        async with ImagePool(args.workers) as pool:
            startup = time.perf_counter() - started
            best_plain = best_ours = math.inf
            plain_out: list[bytes] = []
            ours_out: list[bytes] = []
            for _ in range(args.rounds):
                elapsed, plain_out = run_plain(paths, profile)
                best_plain = min(best_plain, elapsed)
                elapsed, ours_out = await run_batcher(paths, profile, pool)
                best_ours = min(best_ours, elapsed)
    scores = [psnr(a, b) for a, b in zip(ours_out, plain_out, strict=True)]
    plain_rate, ours_rate = args.images / best_plain, args.images / best_ours
    ratio = ours_rate / plain_rate
    print(
        f"{args.images} JPEGs {SIZE[0]}x{SIZE[1]} -> {profile.id} native size, best of {args.rounds} rounds"
    )
    print(f"plain Pillow (1 process): {plain_rate:6.2f} images/s")
    print(f"batcher ({pool.workers} workers):    {ours_rate:6.2f} images/s   (pool start {startup:.2f} s)")
    print(f"ratio: {ratio:.2f}x  (target >= 2.5x)")
    mean = sum(scores) / len(scores)
    print(f"PSNR vs plain: min {min(scores):.1f} dB, mean {mean:.1f} dB  (target >= 35 dB)")
    return 0 if ratio >= 2.5 and min(scores) >= 35 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=default_workers())
    return anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
