"""Issue 9 end to end: every image arrives at exactly the size its model would resize it to."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from batcher.models import load_registry
from tests.helpers import batcher, results_by_id, write_job

SIZES = [(1075, 1520), (2000, 1500), (3840, 2160), (1092, 1092), (640, 480), (6000, 800), (300, 3000)]


def mixed_rows(tmp: Path) -> list[dict]:
    (tmp / "images").mkdir()
    rows = []
    for w, h in SIZES:
        name = f"images/{w}x{h}.png" if w == 1092 else f"images/{w}x{h}.jpg"
        Image.new("RGB", (w, h), (w % 256, h % 256, 90)).save(tmp / name)
        rows.append({"id": f"img-{w}x{h}", "image": name, "kind": "picture"})
    return rows


@pytest.mark.parametrize("model", ["claude-haiku-5-5", "claude-opus-4-8"])
def test_images_arrive_at_the_models_native_size(tmp_path: Path, simulator, model: str) -> None:  # type: ignore[no-untyped-def]
    profile = load_registry()[model]
    job = write_job(tmp_path, mixed_rows(tmp_path))
    job.write_text(job.read_text().replace("claude-haiku-5-5", model))
    done = batcher(job, simulator)
    assert done.returncode == 0, done.stderr
    ledger = simulator.sim.ledger.snapshot()
    assert ledger["images_resized"] == 0, "the API had to resize an image batcher sent"
    results = results_by_id(tmp_path / "out")
    for w, h in SIZES:
        sent = results[f"img-{w}x{h}"]["images"][0]
        assert (sent["width"], sent["height"]) == profile.native_size(w, h), (w, h)
        assert sent["tokens"] == profile.image_tokens(w, h)
    # an image already within its model's size goes as it was, byte for byte
    kept = results["img-1092x1092"]["images"][0]
    assert kept["bytes"] == (tmp_path / "images" / "1092x1092.png").stat().st_size
    # the tokens batcher recorded per image are the tokens the API counted
    assert sum(r["images"][0]["tokens"] for r in results.values()) == ledger["image_tokens"]


def test_a_job_may_ask_for_less(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    job = write_job(tmp_path, mixed_rows(tmp_path))
    job.write_text(
        job.read_text().replace("claude-haiku-5-5", "claude-opus-4-8")
        + "\n[images]\nmax_image_tokens = 800\n"
    )
    done = batcher(job, simulator)
    assert done.returncode == 0, done.stderr
    for row in results_by_id(tmp_path / "out").values():
        assert row["images"][0]["tokens"] <= 800
    assert simulator.sim.ledger.snapshot()["images_resized"] == 0
