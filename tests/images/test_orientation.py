"""Orientation is applied exactly once, whatever Pillow already did with it.

Every case is checked against an independent reference: Pillow's own full load followed by
``ImageOps.exif_transpose`` (which knows what its plugins did on load). Pillow turns TIFFs upright on
``load()`` and, since 11.0, reports their upright size from the header; batcher must neither rotate
them again nor swap their size again.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image, TiffImagePlugin

from batcher.images import decode
from batcher.images.prepare import prepare_file, probe_size
from batcher.images.sizing import ImageOptions, target_size
from batcher.models import ModelProfile
from tests.images import builders

ORIENTATIONS = range(1, 9)


reference = builders.upright_reference
mean_difference = builders.mean_difference


def check_against_reference(data: bytes, profile: ModelProfile, tmp_path, tolerance: float = 6.0) -> None:
    ref = reference(data)
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    assert probe_size(path)[:2] == ref.size
    assert probe_size(data)[:2] == ref.size
    prepared = prepare_file(data, profile)
    assert (prepared.source_width, prepared.source_height) == ref.size
    expected = target_size(profile, *ref.size, options=ImageOptions())
    assert (prepared.width, prepared.height) == expected
    with Image.open(io.BytesIO(prepared.data)) as out:
        out.load()
        assert out.size == expected
        scaled = ref.resize(expected, Image.Resampling.LANCZOS)
        assert mean_difference(out, scaled) <= tolerance


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("compression", ["raw", "tiff_lzw", "tiff_adobe_deflate"])
def test_tiff_orientation_is_applied_once(
    haiku: ModelProfile, tmp_path, orientation: int, compression: str
) -> None:
    data = builders.oriented(builders.quadrants((360, 240)), orientation, "TIFF", compression=compression)
    check_against_reference(data, haiku, tmp_path)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_large_tiff_is_resized_in_the_right_frame(haiku: ModelProfile, tmp_path, orientation: int) -> None:
    data = builders.oriented(builders.quadrants((2400, 1600)), orientation, "TIFF")
    check_against_reference(data, haiku, tmp_path)
    assert probe_size(data)[:2] == (2400, 1600)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_bilevel_g4_tiff_orientation(haiku: ModelProfile, tmp_path, orientation: int) -> None:
    """The corpus's g4_orientation_N.tif files, made here: 1-bit, CCITT group 4, through libtiff."""
    bilevel = Image.new("1", (590, 88), 0)
    bilevel.paste(1, (0, 0, 295, 44))  # only the top-left quadrant is white: no flip leaves it alone
    data = builders.oriented(bilevel, orientation, "TIFF", compression="group4")
    check_against_reference(data, haiku, tmp_path, tolerance=3.0)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize(
    ("fmt", "params"), [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True})]
)
def test_exif_orientation_matches_the_reference(
    haiku: ModelProfile, tmp_path, orientation: int, fmt: str, params: dict
) -> None:
    data = builders.oriented(builders.quadrants((360, 240)), orientation, fmt, **params)
    check_against_reference(data, haiku, tmp_path)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_tiff_orientation_given_only_by_xmp(haiku: ModelProfile, tmp_path, orientation: int) -> None:
    """Pillow applies an XMP-only orientation on load without swapping the header size first."""
    op = builders.STORE_FOR_ORIENTATION[orientation]
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[700] = builders.xmp_orientation(orientation)
    info.tagtype[700] = 1  # BYTE
    upright = builders.quadrants((360, 240))
    data = builders.encode(upright.transpose(op), "TIFF", tiffinfo=info)
    assert reference(data).size == (360, 240)
    check_against_reference(data, haiku, tmp_path)


def test_what_pillow_does_is_detected() -> None:
    tiff = decode.pillow_orientation("TIFF")
    assert tiff.load_transposes  # every Pillow batcher supports (>= 10.3)
    major = int(Image.__version__.split(".")[0])
    assert tiff.header_upright == (major >= 11)
    assert tiff == decode._known_orientation("TIFF")  # the fallback agrees with what was detected
    for fmt in ("JPEG", "PNG", "WEBP"):
        assert decode.pillow_orientation(fmt) == decode.LEAVES_IT


def test_undetectable_format_falls_back_to_what_is_known() -> None:
    assert decode.pillow_orientation("PCX") == decode.LEAVES_IT  # no EXIF in PCX: nothing to learn
