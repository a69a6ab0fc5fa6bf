"""Every file of ../shared/corpora/pillow (Pillow's own test images, fuzz crashers included) through
the pool: each one reported, each output valid and within the rules, each failure specifically typed.

Each output is checked against an independent reference: the source decoded by plain Pillow in full
and turned upright by ``ImageOps.exif_transpose`` gives the upright size, hence the exact size the
model would resize it to, which the output must have (smaller only when the byte limit forced it).
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path

import anyio
import pytest
from PIL import Image, ImageFile, ImageOps

from batcher import facts
from batcher.images.command import expand_inputs, run_prepare
from batcher.images.decode import register_plugins
from batcher.images.errors import ERROR_TYPES
from batcher.images.sizing import ImageOptions, target_size
from batcher.images.structure import examine
from batcher.models import ModelProfile
from tests.conftest import SHARED

CORPUS = SHARED / "corpora" / "pillow"
#: What a corpus file may fail with: each names something about the file itself. Not ``timeout``
#: (no allowed decoder may hang), not ``io_error``/``not_found`` (every file is there and readable),
#: nor the generic ``image_error``.
CORPUS_FAILURES = frozenset(
    {
        "empty_file",
        "not_an_image",
        "unsupported_format",
        "truncated",
        "too_many_pixels",
        "decode_error",
        "out_of_memory",
        "too_large",
    }
)
#: Pillow format names by output media type (a re-decode uses only that decoder).
OUTPUT_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}

pytestmark = pytest.mark.corpus


@pytest.mark.anyio
async def test_whole_corpus(haiku: ModelProfile, tmp_path: Path) -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} is absent")
    assert set(CORPUS_FAILURES) <= set(ERROR_TYPES)
    inputs = expand_inputs([CORPUS])
    rows: list[dict] = []
    options = ImageOptions(timeout_s=10.0)
    with anyio.fail_after(120):
        summary = await run_prepare(inputs, haiku, options, out_dir=tmp_path, emit=rows.append, workers=2)
    assert [r["path"] for r in rows] == [str(p) for p in inputs]
    assert summary.total == len(inputs) == len(rows)
    outcomes = Counter(r.get("error_type", "ok") for r in rows)
    register_plugins()  # the reference reads HEIF through pillow-heif too
    for row in rows:
        if row["ok"]:
            check_output(row, haiku, options)
        else:
            assert row["error_type"] in CORPUS_FAILURES, (row["path"], row["error_type"], row["error"])
            assert row["error"].startswith(row["path"])
    print(
        f"\ncorpus: {len(rows)} files: "
        + ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
        + f"; {sum(1 for r in rows if r.get('passthrough'))} sent as they were"
    )
    assert outcomes["ok"] > len(rows) // 2
    probe = CORPUS / "PROBE.jsonl"
    if probe.is_file():
        listed = sum(1 for _ in probe.open())
        assert len(inputs) >= listed  # every file the probe saw is here (plus the probe itself)


def check_output(row: dict, profile: ModelProfile, options: ImageOptions) -> None:
    """The written bytes re-decode strictly as one frame of the media type claimed, at exactly the
    size the model would resize the upright source to; bytes sent as they are equal the input's."""
    path = row["path"]
    data = Path(row["out"]).read_bytes()
    assert len(data) == row["bytes"]
    assert facts.sniff_media_type(data[:16]) == row["media_type"], path
    assert facts.b64_len(len(data)) <= options.max_b64_bytes
    if row["passthrough"]:
        assert data == Path(path).read_bytes(), path
    assert examine(data).complete, (path, examine(data))
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a strict decode: no warning about our own output either
        with Image.open(io.BytesIO(data), formats=[OUTPUT_FORMATS[row["media_type"]]]) as image:
            image.load()
            assert image.size == (row["width"], row["height"]), path
            assert getattr(image, "n_frames", 1) == 1, path
    upright = reference_size(path, row["source_format"])
    assert (row["source_width"], row["source_height"]) == upright, path
    native = target_size(profile, *upright, options=options)
    if "shrunk_to_fit_byte_limit" in row["warnings"]:  # capped by the byte limit: smaller, same shape
        assert row["width"] <= native[0] and row["height"] <= native[1], path
    else:
        assert (row["width"], row["height"]) == native, (path, upright)
    assert row["tokens"] == profile.image_tokens(row["width"], row["height"])


def reference_size(path: str, source_format: str) -> tuple[int, int]:
    """The upright size by plain Pillow: full load, then exif_transpose.

    The reference opens the file with the decoder batcher identified: unrestricted, ``Image.open``
    lets the first plugin whose loose check accepts the bytes claim them once every plugin is loaded
    (TGA claims ``pillow.ico``, then fails to load it). MPO has no opener of its own: Pillow's JPEG
    opener returns the MPO image.
    """
    formats = ["JPEG"] if source_format == "MPO" else [source_format]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path, formats=formats) as image:
            assert image.format == source_format, path
            image.load()
            return ImageOps.exif_transpose(image).size
