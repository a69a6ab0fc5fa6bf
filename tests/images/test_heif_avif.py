"""HEIC (through pillow-heif) and AVIF (Pillow's own plugin) in, upright and at the native size out.

The files are generated here; where this build cannot write (or read) the format, the test skips.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from batcher.images.decode import available_formats, register_plugins
from batcher.images.prepare import prepare_file, probe_size
from batcher.images.sizing import ImageOptions, target_size
from batcher.models import ModelProfile
from tests.images import builders

FORMATS = ["HEIF", "AVIF"]


def encode_or_skip(image: Image.Image, fmt: str, **params: object) -> bytes:
    register_plugins()
    if fmt not in available_formats():
        pytest.skip(f"this Pillow cannot read {fmt}")
    try:
        data = builders.encode(image, fmt, quality=90, **params)
        with Image.open(io.BytesIO(data)) as check:
            check.load()
    except Exception as exc:  # no encoder in this build (pillow-heif without x265, libavif without aom...)
        pytest.skip(f"cannot write {fmt} here: {exc}")
    return data


@pytest.mark.parametrize("fmt", FORMATS)
def test_photo_is_decoded_and_sized(haiku: ModelProfile, fmt: str) -> None:
    source = builders.photo((1400, 1050), noise=0)
    data = encode_or_skip(source, fmt)
    prepared = prepare_file(data, haiku)
    assert prepared.source_format == fmt and not prepared.passthrough  # the API takes neither format
    assert (prepared.source_width, prepared.source_height) == (1400, 1050)
    assert (prepared.width, prepared.height) == target_size(haiku, 1400, 1050, options=ImageOptions())
    assert prepared.width < 1400  # resized to the model's native size
    assert prepared.media_type == "image/jpeg"
    assert probe_size(data) == (1400, 1050, fmt)
    with Image.open(io.BytesIO(prepared.data)) as out:
        expected = source.resize(out.size, Image.Resampling.LANCZOS)
        assert builders.mean_difference(out, expected) <= 6


@pytest.mark.parametrize("fmt", FORMATS)
def test_alpha_is_kept(haiku: ModelProfile, fmt: str) -> None:
    image = builders.photo((400, 300), noise=0).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((400, 300)))
    prepared = prepare_file(encode_or_skip(image, fmt), haiku)
    assert prepared.media_type == "image/png"
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert out.mode == "RGBA" and out.getchannel("A").getextrema()[0] < 40


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("fmt", FORMATS)
def test_orientation_is_applied_once(haiku: ModelProfile, tmp_path, fmt: str, orientation: int) -> None:
    """HEIF: libheif applies the container's rotation and pillow-heif reports orientation 1. AVIF:
    Pillow reports irot/imir as an EXIF orientation and leaves the pixels as stored."""
    upright = builders.quadrants((600, 400))
    op = builders.STORE_FOR_ORIENTATION[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode_or_skip(upright.transpose(op), fmt, exif=exif.tobytes())
    reference = builders.upright_reference(data)
    assert reference.size == (600, 400)  # the file does carry the orientation
    assert builders.mean_difference(reference, upright) <= 8
    path = tmp_path / f"oriented.{fmt.lower()}"
    path.write_bytes(data)
    assert probe_size(path)[:2] == (600, 400)
    prepared = prepare_file(path, haiku)
    expected = target_size(haiku, 600, 400, options=ImageOptions())
    assert (prepared.source_width, prepared.source_height) == (600, 400)
    assert (prepared.width, prepared.height) == expected
    with Image.open(io.BytesIO(prepared.data)) as out:
        assert builders.mean_difference(out, upright.resize(expected, Image.Resampling.LANCZOS)) <= 8
