"""Estimate against what the simulator counts, and the same job online and in batch mode.

    python3 scripts/cost_figures.py [FOLDER]

For the demo job (``batcher.demo.write_demo``) and a mixed-size image set (single- and multi-image
rows, one with 21 images), under a 1568-px model and a 2576-px one: ``batcher estimate``'s input and
image tokens next to the tokens the simulator counted when the job ran, then the job's cost online
and through Message Batches. Every run goes through the real ``batcher`` command, as a subprocess,
against a simulator on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from batcher.demo import write_demo
from batcher.simulator.config import BatchClock, SimConfig
from batcher.simulator.server import running

MIXED_SIZES = [
    (200, 200),
    (1000, 1000),
    (1092, 1092),
    (1075, 1520),
    (2000, 1500),
    (3840, 2160),
    (4000, 300),
    (90, 1400),
    (2576, 1449),
    (6000, 4000),
    (640, 480),
    (1568, 1568),
]

MIXED_JOB = """
[input]
manifest = "manifest.jsonl"
id_column = "id"
image_column = "image"
prompt = "Describe this picture in one line, then list the objects you see. nonce={{id}}"

[request]
model = "{model}"
max_tokens = 150
system = "You write alt text for a photo archive."

[run]
output = "out"
concurrency = 8
"""


def write_mixed(folder: Path, model: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (w, h) in enumerate(MIXED_SIZES):
        name = f"img{i:02d}.{'png' if i % 3 == 2 else 'jpg'}"
        Image.linear_gradient("L").resize((w, h)).convert("RGB").save(folder / name)
        names.append(name)
    rows = [{"id": f"one-{i}", "image": n} for i, n in enumerate(names)]
    rows += [
        {"id": "pair", "image": names[:2]},
        {"id": "triple", "image": names[3:6]},
        {"id": "many", "image": [names[i % len(names)] for i in range(21)]},
    ]
    with (folder / "manifest.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    job = folder / "job.toml"
    job.write_text(MIXED_JOB.format(model=model))
    return job


def batcher(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def run_job(job: Path, out: Path, mode: str) -> dict:
    """Run ``job`` in ``mode`` against a fresh simulator; the simulator's ledger and the spend."""
    text = job.read_text()
    variant = job.with_name(f"{job.stem}-{mode}.toml")
    variant.write_text(text.replace("[run]\n", f'[run]\nmode = "{mode}"\npoll_initial_s = 0.1\n', 1))
    with running(SimConfig(batches=BatchClock(duration_s=1.0))) as sim:
        env = dict(os.environ, ANTHROPIC_API_KEY="figures", ANTHROPIC_BASE_URL=sim.base_url)
        done = batcher("run", str(variant), "--out", str(out), env=env)
        if done.returncode != 0:
            raise SystemExit(f"batcher run exited {done.returncode}: {done.stderr[-2000:]}")
        ledger = sim.sim.ledger.snapshot()
    status = json.loads(batcher("status", str(out), "--json").stdout)
    return {"ledger": ledger, "cost_usd": status["cost_usd"]}


def figures(name: str, job: Path, work: Path) -> None:
    est = json.loads(batcher("estimate", str(job), "--json").stdout)
    online = run_job(job, work / f"{name}-online", "online")
    batch = run_job(job, work / f"{name}-batch", "batch")
    counted = online["ledger"]
    diff = (est["input_tokens"] - counted["input_tokens"]) / counted["input_tokens"]
    print(f"{name}: model {est['model']}, {est['rows']} rows, {est['images']} images")
    print(
        f"  input tokens  estimate {est['input_tokens']:>9,}  counted {counted['input_tokens']:>9,}"
        f"  ({diff:+.2%})"
    )
    print(
        f"  image tokens  estimate {est['image_tokens']:>9,}  counted {counted['image_tokens']:>9,}"
        f"  (resized by the API: {counted['images_resized']})"
    )
    print(f"  output tokens at most  {est['output_tokens_max']:>9,}  counted {counted['output_tokens']:>9,}")
    print(
        f"  cost estimate (worst)  online ${est['cost_usd_online']:.6f}  batch ${est['cost_usd_batch']:.6f}"
    )
    print(
        f"  cost spent             online ${online['cost_usd']:.6f}  batch ${batch['cost_usd']:.6f}"
        f"  (batch/online {batch['cost_usd'] / online['cost_usd']:.3f})"
    )


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="cost-figures-"))
    figures("demo", write_demo(work / "demo"), work)
    for model in ("claude-haiku-5-5", "claude-opus-4-8"):
        figures(f"mixed-{model}", write_mixed(work / f"mixed-{model}", model), work)


if __name__ == "__main__":
    main()
