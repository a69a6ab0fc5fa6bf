"""Benchmark: the same job over images and a manifest in a bucket (moto's S3 server on loopback)
and over the same files on local disk, side by side in one process, each against a fresh
in-process simulator without limits or latency (so what differs is reading the images).

Prints, per variant: wall time, rows/s and rows answered; then the bucket's rows/s as a share of
the local run's (issue 18's closing note asks for this figure).

    python scripts/bench_stores.py [--rows 300] [--size 1024]

Needs the test extra (moto[server], s3fs).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from batcher import stores
from batcher.commands.run import run
from batcher.runner import RunRequest
from batcher.simulator.server import start_in_thread
from batcher.sink import read_results

JOB = """
[input]
manifest = "{manifest}"
id_column = "id"
image_column = "image"
prompt = "Describe this image. nonce={{id}}"

[request]
model = "claude-haiku-5-5"
max_tokens = 60

[run]
output = "{out}"
concurrency = 32
"""


def write_images(folder: Path, n: int, size: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"img{i:05d}.jpg"
        Image.effect_noise((size, size * 3 // 4), 40 + i % 50).convert("RGB").save(folder / name, quality=85)
        names.append(f"images/{name}")
    return names


def run_once(job: Path, base_url: str) -> tuple[float, int]:
    os.environ["ANTHROPIC_API_KEY"] = "bench-key"
    os.environ["ANTHROPIC_BASE_URL"] = base_url
    started = time.perf_counter()
    code = run(RunRequest(job_path=job), err=io.StringIO(), out=io.StringIO())
    seconds = time.perf_counter() - started
    if code != 0:
        sys.exit(f"{job}: exit {code}")
    return seconds, read_results(job.parent / "out").num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--size", type=int, default=1024, help="long edge of each image, px")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    stores.reset_filesystems()
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            names = write_images(tmp / "data" / "images", args.rows, args.size)
            rows = [{"id": f"r{i:05d}", "image": name} for i, name in enumerate(names)]
            (tmp / "data" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            fs = stores.filesystem("s3")
            fs.mkdir("bench")
            fs.put(str(tmp / "data") + "/", "bench/data/", recursive=True)

            figures = {}
            for variant, manifest in (
                ("local", str(tmp / "data" / "manifest.jsonl")),
                ("s3 (moto)", "s3://bench/data/manifest.jsonl"),
            ):
                folder = tmp / variant.split()[0]
                folder.mkdir()
                job = folder / "job.toml"
                job.write_text(JOB.format(manifest=manifest, out="out"))
                sim = start_in_thread(None)
                try:
                    seconds, answered = run_once(job, sim.base_url)
                finally:
                    sim.stop()
                figures[variant] = (seconds, answered)
                print(f"{variant:10} {seconds:7.2f} s  {answered / seconds:8.1f} rows/s  {answered} rows")
            local_rate = figures["local"][1] / figures["local"][0]
            s3_rate = figures["s3 (moto)"][1] / figures["s3 (moto)"][0]
            print(f"s3 / local rows/s: {s3_rate / local_rate:.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
