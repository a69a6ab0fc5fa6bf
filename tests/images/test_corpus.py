"""Every file of ../shared/corpora/pillow (Pillow's own test images, fuzz crashers included) through
the pool: each one reported, each output valid and within the rules, each failure specifically typed.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import anyio
import pytest
from PIL import Image

from batcher import facts
from batcher.images.command import expand_inputs, run_prepare
from batcher.images.errors import ERROR_TYPES
from batcher.images.sizing import ImageOptions, target_size
from batcher.models import ModelProfile
from tests.conftest import SHARED

CORPUS = SHARED / "corpora" / "pillow"
#: Outcomes a corpus file may have that say nothing specific about it.
GENERIC = {"image_error"}

pytestmark = pytest.mark.corpus


@pytest.mark.anyio
async def test_whole_corpus(haiku: ModelProfile, tmp_path: Path) -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} is absent")
    inputs = expand_inputs([CORPUS])
    rows: list[dict] = []
    options = ImageOptions(timeout_s=10.0)
    with anyio.fail_after(120):
        summary = await run_prepare(inputs, haiku, options, out_dir=tmp_path, emit=rows.append, workers=2)
    assert [r["path"] for r in rows] == [str(p) for p in inputs]
    assert summary.total == len(inputs) == len(rows)
    outcomes = Counter(r.get("error_type", "ok") for r in rows)
    for row in rows:
        if row["ok"]:
            check_output(row, haiku, options)
        else:
            assert row["error_type"] in ERROR_TYPES and row["error_type"] not in GENERIC
            assert row["error"].startswith(row["path"])
    print(f"\ncorpus: {len(rows)} files: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    assert outcomes["ok"] > len(rows) // 2
    assert outcomes["timeout"] == 0  # no allowed decoder hangs on Pillow's own crashers
    probe = CORPUS / "PROBE.jsonl"
    if probe.is_file():
        listed = sum(1 for _ in probe.open())
        assert len(inputs) >= listed  # every file the probe saw is here (plus the probe itself)


def check_output(row: dict, profile: ModelProfile, options: ImageOptions) -> None:
    """The written bytes re-decode as the media type claimed, at the size claimed, within the rules."""
    data = Path(row["out"]).read_bytes()
    assert len(data) == row["bytes"]
    assert facts.sniff_media_type(data[:16]) == row["media_type"], row["path"]
    assert facts.b64_len(len(data)) <= options.max_b64_bytes
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (row["width"], row["height"]), row["path"]
    target = target_size(profile, row["source_width"], row["source_height"], options=options)
    assert row["width"] <= target[0] and row["height"] <= target[1]
    assert row["tokens"] == profile.image_tokens(row["width"], row["height"])
