"""Report thumbnails: upright, within the size cap, JPEG, every bad file a typed error (also in the pool)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from batcher.images.errors import ImageError, NotFound, TooManyPixels, Truncated
from batcher.images.pool import ImagePool
from batcher.images.sizing import ImageOptions
from batcher.images.thumbnail import THUMB_QUALITY, Thumbnail, make_thumbnail
from tests.images import builders


def _open(thumb: Thumbnail) -> Image.Image:
    image = Image.open(io.BytesIO(thumb.data))
    image.load()
    return image


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_image_comes_out_upright(orientation: int) -> None:
    upright = builders.quadrants((600, 400))
    thumb = make_thumbnail(builders.oriented_jpeg(upright, orientation), 120)
    assert (thumb.width, thumb.height) == (120, 80)
    assert builders.mean_difference(_open(thumb), upright.resize((120, 80))) < 12


def test_long_edge_is_capped_and_never_enlarged() -> None:
    tall = make_thumbnail(builders.encode(builders.photo((300, 900)), "PNG"), 256)
    assert (tall.width, tall.height) == (85, 256)
    small = make_thumbnail(builders.encode(builders.photo((40, 30)), "PNG"), 256)
    assert (small.width, small.height) == (40, 30)


def test_rgb_jpeg_with_transparency_flattened_on_white() -> None:
    clear = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    thumb = make_thumbnail(builders.encode(clear, "PNG"), 32)
    image = _open(thumb)
    assert image.format == "JPEG" and image.mode == "RGB"
    assert min(image.getpixel((16, 16))) > 245  # type: ignore[arg-type]
    assert thumb.data_uri().startswith("data:image/jpeg;base64,")
    assert base64.b64decode(thumb.data_uri().split(",", 1)[1]) == thumb.data
    assert THUMB_QUALITY == 80


def test_corrupt_truncated_and_missing_files_give_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as junk:
        make_thumbnail(b"this is not an image", 64)
    assert junk.value.error_type == "not_an_image"
    whole = builders.encode(builders.photo((200, 150)), "PNG")
    with pytest.raises(Truncated):
        make_thumbnail(whole[: len(whole) // 2], 64)
    with pytest.raises(NotFound, match="no such file"):
        make_thumbnail(tmp_path / "gone.jpg", 64)


def test_pixel_limit_is_kept() -> None:
    with pytest.raises(TooManyPixels):
        make_thumbnail(builders.encode(builders.flat((400, 400)), "PNG"), 64, ImageOptions(max_pixels=10_000))


def test_thumb_px_must_be_positive() -> None:
    with pytest.raises(ValueError, match="thumb_px"):
        make_thumbnail(builders.encode(builders.flat((10, 10)), "PNG"), 0)


@pytest.mark.anyio
async def test_pool_makes_the_same_thumbnail_and_raises_typed_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.jpg"
    path.write_bytes(builders.oriented_jpeg(builders.quadrants((500, 300)), 6))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    async with ImagePool(workers=1) as pool:
        pooled = await pool.thumbnail(path, 100)
        with pytest.raises(ImageError) as failed:
            await pool.thumbnail(bad, 100)
    assert pooled == make_thumbnail(path, 100)
    assert failed.value.error_type in ("decode_error", "truncated", "not_an_image")
