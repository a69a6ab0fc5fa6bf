"""Bytes on the wire: the same job sent inline (base64) and through the Files API, side by side.

A manifest asks several questions of each image (default 40 photo-sized images x 5 prompts). The
same job runs twice through the real runner (``batcher.runner.run``) against one simulator
subprocess: once with ``[images] transport = "base64"``, once with ``"files"``. Every request body
the client sends is counted on the client side (an httpx transport that reads each body before
passing it on), split into messages calls, uploads and the rest. Printed: both totals, their
ratio, and what the simulator's ledger saw (uploads per image, messages that named files).

    python scripts/bench_files.py [--images 40] [--prompts 5] [--edge 1568]

The simulator has no limits here (its Files budget off, the job's ``files_rpm`` raised), so the
wall times compare the work, not the beta's ~100 uploads a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

JOB = """
[input]
manifest = "manifest.jsonl"
id_column = "id"
image_column = "image"
prompt_column = "prompt"

[request]
model = "claude-haiku-5-5"
max_tokens = 60

[run]
output = "out-{transport}"
concurrency = 16
image_workers = 2

[images]
transport = "{transport}"
files_rpm = 100000
"""

PROMPTS = (
    "Write a one-line caption.",
    "List five tags.",
    "Is anything unsafe here? yes/no.",
    "What is the dominant colour?",
    "Count the people.",
    "Describe the lighting.",
    "Indoor or outdoor?",
    "What season is it?",
)


@dataclass
class Tally:
    """Request body bytes by route, as the client sent them."""

    bytes: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


class CountingTransport(httpx.AsyncHTTPTransport):
    """Reads each request body (multipart uploads included) and counts it before sending."""

    def __init__(self, tally: Tally, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tally = tally

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        route = {"/v1/messages": "messages", "/v1/files": "uploads"}.get(request.url.path, "other")
        self.tally.bytes[route] += len(body)
        self.tally.requests[route] += 1
        return await super().handle_async_request(request)


def photo(i: int, edge: int) -> bytes:
    """A photo-like JPEG: smooth gradients, shapes and sensor-like noise (compresses as photos do)."""
    from PIL import Image, ImageDraw, ImageFilter

    w, h = edge, edge * 3 // 4
    base = Image.radial_gradient("L").resize((w, h)).convert("RGB")
    tint = Image.new("RGB", (w, h), ((i * 53) % 256, (i * 97) % 256, (i * 31) % 256))
    img = Image.blend(base, tint, 0.55)
    draw = ImageDraw.Draw(img)
    for k in range(12):
        x, y = (i * 37 + k * 131) % w, (i * 71 + k * 89) % h
        draw.ellipse((x, y, x + w // 6, y + h // 5), fill=((k * 40) % 256, (i * 20) % 256, 120))
    img = img.filter(ImageFilter.GaussianBlur(3))
    noise = Image.effect_noise((w, h), 24).convert("RGB")
    img = Image.blend(img, noise, 0.12)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def make_dataset(folder: Path, images: int, prompts: int, edge: int) -> int:
    (folder / "images").mkdir(parents=True)
    total = 0
    with (folder / "manifest.jsonl").open("w") as fh:
        for i in range(images):
            data = photo(i, edge)
            total += len(data)
            (folder / "images" / f"photo{i:03d}.jpg").write_bytes(data)
            for q in range(prompts):
                row = {
                    "id": f"p{i:03d}-q{q}",
                    "image": f"images/photo{i:03d}.jpg",
                    "prompt": PROMPTS[q % len(PROMPTS)],
                }
                fh.write(json.dumps(row) + "\n")
    return total


def run_once(folder: Path, transport: str, base_url: str) -> tuple[Tally, float, int]:
    """Run the job with ``transport`` through the real runner, its client's bodies counted."""
    import os

    from batcher import runner
    from batcher.api.client import Client
    from batcher.commands.run import run

    tally = Tally()

    class CountingClient(Client):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, transport=CountingTransport(tally), **kwargs)

    job = folder / f"job-{transport}.toml"
    job.write_text(JOB.format(transport=transport))
    os.environ["ANTHROPIC_API_KEY"] = "bench"
    os.environ["ANTHROPIC_BASE_URL"] = base_url
    # The runner builds its own Client: give it one that counts (a benchmark-only substitution).
    real, runner.Client = runner.Client, CountingClient  # type: ignore[misc]
    err = io.StringIO()
    try:
        started = time.perf_counter()
        # The progress display writes to stderr: keep it out of the benchmark's report.
        with contextlib.redirect_stderr(err):
            code = run(runner.RunRequest(job_path=job), err=err, out=io.StringIO())
        elapsed = time.perf_counter() - started
    finally:
        runner.Client = real  # type: ignore[misc]
    if code != 0:
        sys.exit(f"the {transport} run failed (exit {code}):\n{err.getvalue()}")
    for line in err.getvalue().splitlines():
        if line.startswith("files: "):
            print(f"  {line}")
    return tally, elapsed, code


def ledger(base_url: str) -> dict[str, Any]:
    return httpx.get(f"{base_url}/_ledger", timeout=30).json()  # type: ignore[no-any-return]


def mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--edge", type=int, default=1568, help="Long edge of the photos (px).")
    args = parser.parse_args()

    from batcher.simulator.server import start_subprocess, stop_subprocess

    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        folder = Path(tmp)
        source_bytes = make_dataset(folder, args.images, args.prompts, args.edge)
        rows = args.images * args.prompts
        print(
            f"{args.images} photos ({mb(source_bytes)} of JPEG, {args.edge} px long edge) x "
            f"{args.prompts} prompts = {rows} rows; claude-haiku-5-5, one simulator subprocess"
        )
        base_url, proc = start_subprocess(["--seed", "1"])
        try:
            inline, inline_s, _ = run_once(folder, "base64", base_url)
            after_inline = ledger(base_url)
            files, files_s, _ = run_once(folder, "files", base_url)
            after_files = ledger(base_url)
        finally:
            stop_subprocess(proc)

    uploads = after_files["uploads_by_hash"]
    by_file = sum(1 for s in after_files["images"] if s["source"] == "file")
    by_b64 = sum(1 for s in after_inline["images"] if s["source"] == "base64")
    print()
    print(f"{'':<10} {'messages':>14} {'uploads':>14} {'total':>14} {'requests':>9} {'wall':>8}")
    for name, tally, secs in (("base64", inline, inline_s), ("files", files, files_s)):
        print(
            f"{name:<10} {mb(tally.bytes['messages']):>14} {mb(tally.bytes['uploads']):>14} "
            f"{mb(tally.total):>14} {sum(tally.requests.values()):>9} {secs:>7.1f}s"
        )
    print()
    print(
        f"bytes sent, base64 / files: {inline.total / files.total:.2f}x "
        f"({mb(inline.total - files.total)} less with files)"
    )
    print(
        f"ledger: base64 run {by_b64} inline images; files run {len(uploads)} images uploaded "
        f"({sorted(set(uploads.values()))} upload(s) each), {by_file} messages images by file id"
    )


if __name__ == "__main__":
    main()
