"""prepare_file on generated images: one test per rule of issue 4 (sizes per issue 9)."""

from __future__ import annotations

import io
import itertools
import math
import zlib

import pytest
from PIL import Image, ImageChops, ImageCms, ImageStat

from batcher import facts
from batcher.images.prepare import PreparedImage, prepare_file, probe_size
from batcher.images.sizing import ImageOptions, target_size
from batcher.models import ModelProfile
from tests.images import builders


def reopen(prepared: PreparedImage) -> Image.Image:
    """Decode what would be sent, checking the declared media type against the bytes."""
    assert facts.sniff_media_type(prepared.data[:16]) == prepared.media_type
    image = Image.open(io.BytesIO(prepared.data))
    image.load()
    assert image.size == (prepared.width, prepared.height)
    return image


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 24) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1075, 1520), (924, 1307)),
        ((2000, 1500), (1270, 952)),
        ((3840, 2160), (1456, 819)),
    ],
)
def test_jpeg_lands_at_the_models_native_size(
    haiku: ModelProfile, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    prepared = prepare_file(builders.encode(builders.photo(size), "JPEG"), haiku)
    assert (prepared.width, prepared.height) == expected
    assert prepared.media_type == "image/jpeg" and not prepared.passthrough
    assert prepared.tokens == facts.visual_tokens(*expected) <= haiku.image_token_budget
    assert (prepared.source_width, prepared.source_height) == size
    reopen(prepared)


def test_high_resolution_model_keeps_more(opus: ModelProfile) -> None:
    prepared = prepare_file(builders.encode(builders.photo((3840, 2160)), "JPEG"), opus)
    assert (prepared.width, prepared.height) == (2576, 1449)
    assert prepared.tokens == 4784


def test_compliant_jpeg_is_sent_byte_for_byte(haiku: ModelProfile) -> None:
    data = builders.encode(builders.photo((1092, 1092)), "JPEG", quality=90)
    prepared = prepare_file(data, haiku)
    assert prepared.passthrough and prepared.data == data
    assert (prepared.width, prepared.height, prepared.tokens) == (1092, 1092, 1521)
    assert prepared.media_type == "image/jpeg"


@pytest.mark.parametrize(
    ("fmt", "media_type"), [("PNG", "image/png"), ("GIF", "image/gif"), ("WEBP", "image/webp")]
)
def test_compliant_png_gif_webp_pass_through(haiku: ModelProfile, fmt: str, media_type: str) -> None:
    data = builders.encode(builders.photo((300, 200)), fmt)
    prepared = prepare_file(data, haiku)
    assert prepared.passthrough and prepared.data == data and prepared.media_type == media_type


def test_rotated_but_compliant_jpeg_is_re_encoded(haiku: ModelProfile) -> None:
    data = builders.oriented_jpeg(builders.quadrants((300, 200)), 6)
    prepared = prepare_file(data, haiku)
    assert not prepared.passthrough
    assert (prepared.width, prepared.height) == (300, 200)


def test_tiff_and_bmp_are_never_passed_through(haiku: ModelProfile) -> None:
    for fmt in ("TIFF", "BMP"):
        prepared = prepare_file(builders.encode(builders.photo((300, 200)), fmt), haiku)
        assert not prepared.passthrough
        assert prepared.media_type in facts.MEDIA_TYPES
        reopen(prepared)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("upright_size", [(360, 240), (2400, 1600)])
def test_exif_orientation_makes_pixels_upright(
    haiku: ModelProfile, orientation: int, upright_size: tuple[int, int]
) -> None:
    data = builders.oriented_jpeg(builders.quadrants(upright_size), orientation)
    prepared = prepare_file(data, haiku)
    expected = target_size(haiku, *upright_size, options=ImageOptions())
    assert (prepared.width, prepared.height) == expected
    assert (prepared.source_width, prepared.source_height) == upright_size
    image = reopen(prepared).convert("RGB")
    w, h = image.size
    probes = ((w // 4, h // 4), (3 * w // 4, h // 4), (w // 4, 3 * h // 4), (3 * w // 4, 3 * h // 4))
    for point, colour in zip(probes, builders.QUADRANTS, strict=True):
        assert close(image.getpixel(point), colour), (orientation, point, image.getpixel(point))


def test_probe_size_applies_orientation_without_decoding(haiku: ModelProfile, tmp_path) -> None:
    path = tmp_path / "rot.jpg"
    path.write_bytes(builders.oriented_jpeg(builders.quadrants((2400, 1600)), 8))
    assert probe_size(path) == (2400, 1600, "JPEG")
    assert prepare_file(path, haiku).tokens == haiku.image_tokens(2400, 1600)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_goes_through_its_icc_profile(haiku: ModelProfile, fmt: str) -> None:
    icc = builders.cmyk_icc_profile()
    cmyk = Image.new("CMYK", (240, 240), (255, 0, 0, 0))
    data = builders.encode(cmyk, fmt, icc_profile=icc, **({"quality": 95} if fmt == "JPEG" else {}))
    prepared = prepare_file(data, haiku)
    pixel = reopen(prepared).convert("RGB").getpixel((120, 120))
    reference = ImageCms.profileToProfile(
        cmyk,
        ImageCms.ImageCmsProfile(io.BytesIO(icc)),
        ImageCms.createProfile("sRGB"),
        renderingIntent=ImageCms.Intent.PERCEPTUAL,
        outputMode="RGB",
    ).getpixel((0, 0))
    naive = cmyk.convert("RGB").getpixel((0, 0))
    assert close(pixel, reference, 12), (pixel, reference)
    assert not close(pixel, naive, 40), (pixel, naive)


def test_cmyk_without_profile_is_converted(haiku: ModelProfile) -> None:
    data = builders.encode(Image.new("CMYK", (240, 240), (0, 255, 255, 0)), "JPEG")
    prepared = prepare_file(data, haiku)
    assert prepared.media_type == "image/jpeg"
    assert close(reopen(prepared).convert("RGB").getpixel((10, 10)), (255, 0, 0), 30)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_gradient_is_scaled_not_clipped(haiku: ModelProfile, fmt: str) -> None:
    width = 512
    gradient = Image.new("I;16", (width, 32))
    gradient.putdata([x * 65535 // (width - 1) for _ in range(32) for x in range(width)])
    prepared = prepare_file(builders.encode(gradient, fmt), haiku)
    row = [reopen(prepared).convert("L").getpixel((x, 16)) for x in range(width)]
    assert row[0] <= 2 and row[-1] >= 253
    assert abs(row[width // 2] - 128) <= 3  # clipping would put the middle at 255
    assert all(b >= a for a, b in itertools.pairwise(row))
    assert len(set(row)) > 200


def test_float_image_is_stretched(haiku: ModelProfile) -> None:
    image = Image.new("F", (256, 16))
    image.putdata([x / 255 * 4.0 - 2.0 for _ in range(16) for x in range(256)])  # -2.0 .. 2.0
    prepared = prepare_file(builders.encode(image, "TIFF"), haiku)
    gray = reopen(prepared).convert("L")
    assert gray.getpixel((0, 8)) <= 2 and gray.getpixel((255, 8)) >= 253


def test_palette_is_converted_before_resampling(haiku: ModelProfile) -> None:
    palette_image = builders.photo((2000, 1500), noise=0).quantize(16)
    prepared = prepare_file(builders.encode(palette_image, "PNG"), haiku)
    image = reopen(prepared)
    assert (prepared.width, prepared.height) == (1270, 952)
    assert prepared.media_type == "image/png"  # a paletted source is a graphic
    assert image.mode in ("RGB", "RGBA")
    # resampled in RGB: edges are blended, so more colours than the 16 of the palette
    assert len(image.convert("RGB").getcolors(1 << 16) or []) > 16


def test_one_bit_is_converted_before_resampling(haiku: ModelProfile) -> None:
    grey = builders.quadrants((2000, 1500)).convert("L")
    bilevel = grey.point(lambda v: 255 if v > 128 else 0).convert("1")
    prepared = prepare_file(builders.encode(bilevel, "TIFF", compression="group4"), haiku)
    image = reopen(prepared)
    assert (prepared.width, prepared.height) == (1270, 952)
    assert image.mode == "L"
    assert len(image.getcolors(256) or []) > 2  # anti-aliased edges: resampled as greyscale


def test_rgba_png_keeps_alpha(haiku: ModelProfile) -> None:
    image = builders.photo((400, 300)).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((400, 300)))
    prepared = prepare_file(builders.encode(image, "TIFF"), haiku)
    out = reopen(prepared)
    assert prepared.media_type == "image/png" and out.mode == "RGBA"
    assert out.getchannel("A").getextrema() == (0, 255)


def test_rgba_too_big_for_png_is_flattened_on_white_jpeg(huge_model: ModelProfile) -> None:
    image = builders.noise((1400, 1400)).convert("RGBA")
    image.putalpha(Image.new("L", image.size, 0))  # fully transparent: flattening gives white
    limit = 2 * 1024 * 1024
    prepared = prepare_file(builders.encode(image, "PNG"), huge_model, ImageOptions(max_b64_bytes=limit))
    out = reopen(prepared)
    assert prepared.media_type == "image/jpeg" and out.mode == "RGB"
    assert "png_over_limit_sent_as_jpeg" in prepared.warnings
    assert ImageStat.Stat(out).mean[0] > 250


def test_opaque_alpha_is_dropped_and_photo_goes_jpeg(haiku: ModelProfile) -> None:
    prepared = prepare_file(builders.encode(builders.photo((600, 400)).convert("RGBA"), "TIFF"), haiku)
    assert prepared.media_type == "image/jpeg"


def test_few_colour_graphic_goes_png(haiku: ModelProfile) -> None:
    prepared = prepare_file(builders.encode(builders.quadrants((600, 400)), "BMP"), haiku)
    assert prepared.media_type == "image/png"


def test_animated_gif_sends_its_first_frame(haiku: ModelProfile) -> None:
    frames = [Image.new("RGB", (300, 200), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = builders.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    prepared = prepare_file(data, haiku)
    assert not prepared.passthrough
    out = reopen(prepared)
    assert getattr(out, "n_frames", 1) == 1
    assert close(out.convert("RGB").getpixel((150, 100)), (255, 0, 0), 8)


def test_mpo_sends_its_primary_image(haiku: ModelProfile) -> None:
    left, right = Image.new("RGB", (640, 480), (250, 0, 0)), Image.new("RGB", (640, 480), (0, 0, 250))
    data = builders.encode(left, "MPO", save_all=True, append_images=[right])
    prepared = prepare_file(data, haiku)
    assert prepared.source_format == "MPO" and not prepared.passthrough
    out = reopen(prepared)
    assert prepared.media_type == "image/jpeg"
    assert close(out.convert("RGB").getpixel((320, 240)), (250, 0, 0), 12)


def test_mpo_with_a_broken_mp_index_is_not_passed_through(haiku: ModelProfile) -> None:
    """Pillow reads it as a plain JPEG (with a warning); its second image is still in the bytes."""
    left, right = Image.new("RGB", (300, 200), (250, 0, 0)), Image.new("RGB", (300, 200), (0, 0, 250))
    data = bytearray(builders.encode(left, "MPO", save_all=True, append_images=[right]))
    index = data.index(b"MPF\0")
    data[index + 4] = 0x20  # the MP index's byte-order mark: unreadable
    prepared = prepare_file(bytes(data), haiku)
    assert prepared.source_format == "JPEG" and not prepared.passthrough
    assert close(reopen(prepared).convert("RGB").getpixel((150, 100)), (250, 0, 0), 12)


def test_invalid_apng_is_not_passed_through(haiku: ModelProfile) -> None:
    """An APNG whose frame count Pillow rejects reads as a still PNG; other decoders may animate it."""
    frames = [Image.new("RGB", (300, 200), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = bytearray(builders.encode(frames[0], "PNG", save_all=True, append_images=frames[1:]))
    actl = data.index(b"acTL")
    data[actl + 4 : actl + 8] = (0).to_bytes(4, "big")  # num_frames 0: invalid
    data[actl + 12 : actl + 16] = zlib.crc32(bytes(data[actl : actl + 12])).to_bytes(4, "big")
    with pytest.warns(UserWarning, match="Invalid APNG"):
        assert not getattr(Image.open(io.BytesIO(bytes(data))), "is_animated", False)
    prepared = prepare_file(bytes(data), haiku)
    assert not prepared.passthrough
    assert getattr(reopen(prepared), "n_frames", 1) == 1


def test_noisy_huge_image_fits_5_mb_of_base64(huge_model: ModelProfile) -> None:
    data = builders.encode(builders.noise((3000, 2500)), "PNG")
    assert facts.b64_len(len(data)) > facts.PORTABLE_IMAGE_B64_BYTES
    prepared = prepare_file(data, huge_model)
    assert facts.b64_len(len(prepared.data)) <= facts.PORTABLE_IMAGE_B64_BYTES
    assert prepared.media_type == "image/jpeg"
    reopen(prepared)


def test_byte_limit_shrinks_when_quality_is_not_enough(huge_model: ModelProfile) -> None:
    limit = 400 * 1024
    prepared = prepare_file(
        builders.encode(builders.noise((1500, 1500)), "PNG"), huge_model, ImageOptions(max_b64_bytes=limit)
    )
    assert facts.b64_len(len(prepared.data)) <= limit
    assert prepared.width < 1500 and "shrunk_to_fit_byte_limit" in prepared.warnings
    assert prepared.tokens == huge_model.image_tokens(prepared.width, prepared.height)


def test_oversized_compliant_file_is_not_passed_through(huge_model: ModelProfile) -> None:
    data = builders.encode(builders.noise((1200, 1200)), "PNG")
    limit = facts.b64_len(len(data)) - 4
    prepared = prepare_file(data, huge_model, ImageOptions(max_b64_bytes=limit))
    assert not prepared.passthrough and facts.b64_len(len(prepared.data)) <= limit


def test_small_image_is_sent_with_a_warning(haiku: ModelProfile) -> None:
    prepared = prepare_file(builders.encode(builders.photo((150, 400)), "JPEG"), haiku)
    assert "small_image" in prepared.warnings
    big = prepare_file(builders.encode(builders.photo((400, 400)), "JPEG"), haiku)
    assert "small_image" not in big.warnings


def test_many_images_in_a_request_fit_2000_px(opus: ModelProfile) -> None:
    data = builders.encode(builders.photo((3840, 2160)), "JPEG")
    prepared = prepare_file(data, opus, images_in_request=21)
    assert (prepared.width, prepared.height) == (2000, 1125)


def test_job_caps_apply(opus: ModelProfile) -> None:
    data = builders.encode(builders.photo((3840, 2160)), "JPEG")
    edge_capped = prepare_file(data, opus, ImageOptions(max_edge=1000))
    assert (edge_capped.width, edge_capped.height) == (1000, 562)
    capped = prepare_file(data, opus, ImageOptions(max_image_tokens=500))
    assert capped.tokens <= 500


def test_draft_decode_matches_a_full_decode(haiku: ModelProfile) -> None:
    """DCT scaling must not cost fidelity: compare with full decode + LANCZOS at the same size."""
    data = builders.encode(builders.photo((4000, 3000), seed=3), "JPEG", quality=92)
    prepared = prepare_file(data, haiku)
    ours = reopen(prepared).convert("RGB")
    full = Image.open(io.BytesIO(data)).convert("RGB").resize(ours.size, Image.Resampling.LANCZOS)
    assert psnr(ours, full) >= 35


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = sum(v**2 for v in ImageStat.Stat(ImageChops.difference(a, b)).rms) / 3
    return 10 * math.log10(255**2 / max(mse, 1e-9))


def test_sha256_and_fields(haiku: ModelProfile) -> None:
    import hashlib

    prepared = prepare_file(builders.encode(builders.photo((500, 400)), "PNG"), haiku)
    assert prepared.sha256 == hashlib.sha256(prepared.data).hexdigest()
    assert PreparedImage.from_dict(prepared.to_dict()) == prepared
    assert prepared.source_format == "PNG"
