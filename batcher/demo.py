"""``batcher demo``: a whole job, end to end, with no key and no network.

It writes a small image set and manifest into a folder, starts the built-in simulator of the API
on loopback, runs a job over it exactly as ``batcher run`` would, and says where the results are.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import TextIO

DEMO_MODEL = "claude-haiku-5-5"

JOB = """\
# A demo job: caption every image, cheaply, with Claude Haiku 5.5.
[input]
manifest = "manifest.csv"
id_column = "id"
image_column = "image"
prompt = "Write a one-line caption for this {subject}. nonce={id}"

[request]
model = "{model}"
max_tokens = 120
effort = "low"

[run]
output = "out"
concurrency = 8
"""

SUBJECTS = ["sunset", "forest", "ocean", "desert", "city", "meadow", "glacier", "canyon"]


def make_images(folder: Path, count: int = 24) -> list[tuple[str, str, str]]:
    """Photo-like images of assorted sizes and kinds; returns (id, relative path, subject)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    sizes = [(4032, 3024), (1920, 1080), (1080, 1920), (800, 600), (1092, 1092), (3000, 1000), (150, 120)]
    for n in range(count):
        w, h = sizes[n % len(sizes)]
        subject = SUBJECTS[n % len(SUBJECTS)]
        top = ((n * 37) % 256, (n * 91) % 256, (n * 53) % 256)
        img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
        img = Image.blend(img, Image.new("RGB", (w, h), top), 0.6)
        ImageDraw.Draw(img).ellipse((w // 4, h // 4, w // 2, h // 2), fill=(255 - top[0], 200, top[2]))
        if n % 5 == 4:
            name = f"img{n:03d}.png"
            img.putalpha(200)
            img.save(folder / name)
        else:
            name = f"img{n:03d}.jpg"
            exif = Image.Exif()
            if n % 7 == 3:
                exif[0x0112] = 6  # a phone photo stored sideways: batcher sends it upright
            img.save(folder / name, quality=90, exif=exif)
        rows.append((f"demo-{n:03d}", f"images/{name}", subject))
    return rows


def write_demo(folder: Path) -> Path:
    """The demo's images, manifest and job file under ``folder``; returns the job path."""
    rows = make_images(folder / "images")
    with (folder / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "subject"])
        writer.writerows(rows)
    job = folder / "job.toml"
    job.write_text(JOB.replace("{model}", DEMO_MODEL))
    return job


def run_demo(folder: Path, *, err: TextIO = sys.stderr, out: TextIO = sys.stdout) -> int:
    from batcher.commands.run import run
    from batcher.runner import RunRequest
    from batcher.simulator.config import Latency, SimConfig
    from batcher.simulator.server import running

    folder = folder.resolve()
    job = write_demo(folder)
    print(f"demo: {len(list((folder / 'images').iterdir()))} images and a manifest in {folder}", file=err)
    # A little latency so the run looks like the real thing; no limits, no faults.
    with running(SimConfig(latency=Latency(base_s=0.2, jitter_s=0.2))) as sim:
        print(f"demo: simulator of the API on {sim.base_url}", file=err)
        saved = {k: os.environ.get(k) for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}
        os.environ["ANTHROPIC_API_KEY"] = "demo-key-not-a-secret"
        os.environ["ANTHROPIC_BASE_URL"] = sim.base_url
        try:
            code = run(RunRequest(job_path=job), err=err, out=out)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    print(f"demo: done (exit {code}). Look at the results with: batcher status {folder / 'out'}", file=err)
    return code
