"""Every way a file can fail is a specific error type, with a message naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from batcher.images import errors
from batcher.images.errors import ImageError, error_from_type
from batcher.images.prepare import prepare_file, probe_size
from batcher.images.sizing import ImageOptions
from batcher.models import ModelProfile
from tests.images import builders

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 100 100
%%EndComments
newpath 10 10 moveto 90 90 lineto stroke
showpage
%%EOF
"""


def fail(source: Path | bytes, profile: ModelProfile, options: ImageOptions | None = None) -> ImageError:
    with pytest.raises(ImageError) as info:
        prepare_file(source, profile, options)
    return info.value


def test_missing_path(haiku: ModelProfile, tmp_path: Path) -> None:
    err = fail(tmp_path / "nope.jpg", haiku)
    assert err.error_type == "not_found" and "nope.jpg" in str(err)


def test_empty_file(haiku: ModelProfile, tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    err = fail(tmp_path / "empty.png", haiku)
    assert err.error_type == "empty_file" and "empty.png" in str(err)


def test_text_file_named_png(haiku: ModelProfile, tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("this is not a picture\n" * 20)
    err = fail(tmp_path / "notes.png", haiku)
    assert err.error_type == "not_an_image" and "notes.png" in str(err)


def test_directory_is_not_a_file(haiku: ModelProfile, tmp_path: Path) -> None:
    # Anything but a regular file is one error type (issue 13: FIFOs and devices too).
    err = fail(tmp_path, haiku)
    assert err.error_type == "not_a_file" and "a directory" in str(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(haiku: ModelProfile, tmp_path: Path) -> None:
    path = tmp_path / "secret.jpg"
    path.write_bytes(builders.encode(builders.flat((50, 50)), "JPEG"))
    path.chmod(0)
    assert fail(path, haiku).error_type == "io_error"


def test_eps_is_refused_without_running_ghostscript(
    haiku: ModelProfile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import EpsImagePlugin

    def no_ghostscript(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ghostscript was started")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    monkeypatch.setattr("subprocess.Popen", no_ghostscript)
    monkeypatch.setattr("subprocess.check_call", no_ghostscript)
    (tmp_path / "drawing.eps").write_bytes(EPS)
    err = fail(tmp_path / "drawing.eps", haiku)
    assert err.error_type == "unsupported_format" and "EPS" in str(err)


@pytest.mark.parametrize("fmt", ["ICNS", "SGI", "DDS"])
def test_formats_off_the_allowlist_are_unsupported(haiku: ModelProfile, fmt: str) -> None:
    err = fail(builders.encode(builders.flat((64, 64)), fmt), haiku)
    assert err.error_type == "unsupported_format" and fmt in str(err)


def test_truncated_jpeg(haiku: ModelProfile) -> None:
    data = builders.encode(builders.photo((800, 600)), "JPEG")
    err = fail(data[: len(data) // 2], haiku)
    assert err.error_type == "truncated"


def test_truncated_jpeg_accepted_on_request(haiku: ModelProfile) -> None:
    data = builders.encode(builders.photo((800, 600)), "JPEG")
    prepared = prepare_file(data[: len(data) // 2], haiku, ImageOptions(allow_truncated=True))
    assert (prepared.width, prepared.height) == (800, 600)
    assert not prepared.passthrough  # the broken bytes themselves are never sent
    assert "truncated_accepted" in prepared.warnings


def test_truncation_switch_does_not_leak(haiku: ModelProfile) -> None:
    from PIL import ImageFile

    data = builders.encode(builders.photo((400, 300)), "JPEG")
    prepare_file(data[: len(data) // 2], haiku, ImageOptions(allow_truncated=True))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert fail(data[: len(data) // 2], haiku).error_type == "truncated"


def test_truncated_png(haiku: ModelProfile) -> None:
    data = builders.encode(builders.photo((600, 400)), "PNG")
    assert fail(data[: len(data) * 2 // 3], haiku).error_type == "truncated"


@pytest.mark.parametrize("cut", range(1, 21))
def test_png_missing_its_last_bytes_is_truncated_not_passed_through(haiku: ModelProfile, cut: int) -> None:
    """Pillow decodes a PNG without IEND, the last IDAT's CRC or part of the adler32 without a word."""
    data = builders.encode(builders.photo((300, 200)), "PNG")
    assert prepare_file(data, haiku).passthrough  # complete and compliant: sent as it is
    err = fail(data[:-cut], haiku)
    assert err.error_type == "truncated" and "IEND" in str(err)


@pytest.mark.parametrize("cut", [1, 2])
def test_gif_missing_its_trailer_is_truncated(haiku: ModelProfile, cut: int) -> None:
    data = builders.encode(builders.photo((300, 200)), "GIF")
    assert prepare_file(data, haiku).passthrough
    assert fail(data[:-cut], haiku).error_type == "truncated"


def test_large_truncated_png_is_truncated_even_when_re_encoded(haiku: ModelProfile) -> None:
    data = builders.encode(builders.photo((2000, 1500)), "PNG")
    assert fail(data[:-12], haiku).error_type == "truncated"


@pytest.mark.parametrize(("fmt", "cut"), [("PNG", 12), ("PNG", 20), ("GIF", 1)])
def test_truncated_png_gif_accepted_on_request_are_re_encoded(
    haiku: ModelProfile, fmt: str, cut: int
) -> None:
    original = builders.photo((300, 200))
    data = builders.encode(original, fmt)
    prepared = prepare_file(data[:-cut], haiku, ImageOptions(allow_truncated=True))
    assert not prepared.passthrough and prepared.data != data[:-cut]
    assert "truncated_accepted" in prepared.warnings
    assert (prepared.width, prepared.height) == (300, 200)


@pytest.mark.parametrize("cut", [1, 10, 500])
def test_truncated_webp_is_truncated(haiku: ModelProfile, tmp_path: Path, cut: int) -> None:
    data = builders.encode(builders.photo((300, 200)), "WEBP")
    err = fail(data[:-cut], haiku)
    assert err.error_type == "truncated" and "RIFF" in str(err)
    # libwebp cannot read it leniently either: still truncated, never a bare decode_error
    assert fail(data[:-cut], haiku, ImageOptions(allow_truncated=True)).error_type == "truncated"
    path = tmp_path / "cut.webp"
    path.write_bytes(data[:-cut])
    with pytest.raises(errors.Truncated):
        probe_size(path)


@pytest.mark.parametrize("no_jp2", [False, True])
@pytest.mark.parametrize("cut", [1, 10, 100])
def test_truncated_jpeg2000_is_truncated(haiku: ModelProfile, no_jp2: bool, cut: int) -> None:
    data = builders.encode(builders.photo((300, 200)), "JPEG2000", no_jp2=no_jp2)
    assert prepare_file(data, haiku).media_type in ("image/jpeg", "image/png")
    assert fail(data[:-cut], haiku).error_type == "truncated"


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "JPEG"])
def test_bytes_after_the_end_are_re_encoded_not_sent(haiku: ModelProfile, fmt: str) -> None:
    data = builders.encode(builders.photo((300, 200)), fmt) + b"\0\0trailing"
    prepared = prepare_file(data, haiku)
    assert not prepared.passthrough and (prepared.width, prepared.height) == (300, 200)


def test_png_with_a_wrong_crc_is_re_encoded_not_sent(haiku: ModelProfile) -> None:
    data = bytearray(builders.encode(builders.photo((300, 200)), "PNG"))
    data[data.rindex(b"IEND") - 8] ^= 0xFF  # the last IDAT's CRC (Pillow does not check it)
    prepared = prepare_file(bytes(data), haiku)
    assert not prepared.passthrough


def test_decompression_bomb_is_an_error(haiku: ModelProfile) -> None:
    # a tiny file that declares 20000x20000 pixels (a 1-bit PNG of zeros compresses to almost nothing)
    data = builders.encode(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(data) < 100_000
    err = fail(data, haiku, ImageOptions(max_pixels=50_000_000))
    assert err.error_type == "too_many_pixels" and "pixels" in str(err)


def test_pillow_bomb_warning_is_an_error_too(haiku: ModelProfile) -> None:
    from PIL import Image as PILImage

    data = builders.encode(builders.flat((100, 100)), "PNG")
    assert fail(data, haiku, ImageOptions(max_pixels=5_000)).error_type == "too_many_pixels"
    assert PILImage.MAX_IMAGE_PIXELS != 5_000  # the limit was scoped to the call


def test_corrupt_data_is_a_decode_error(haiku: ModelProfile) -> None:
    data = bytearray(builders.encode(builders.photo((300, 200), noise=0), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 20 : idat + 60] = b"\xff" * 40  # garbage inside the compressed stream
    assert fail(bytes(data), haiku).error_type == "decode_error"


def test_nothing_fits_is_too_large(huge_model: ModelProfile, monkeypatch: pytest.MonkeyPatch) -> None:
    from batcher.images import encode

    monkeypatch.setattr(encode, "MIN_EDGE", 200)  # stop shrinking early: 1 KB cannot hold 200 px of noise
    data = builders.encode(builders.noise((400, 400)), "PNG")
    err = fail(data, huge_model, ImageOptions(max_b64_bytes=1024))
    assert err.error_type == "too_large" and "1,024" in str(err)


def test_probe_reports_header_errors(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_text("hello")
    with pytest.raises(errors.NotAnImage):
        probe_size(tmp_path / "x.png")
    with pytest.raises(errors.NotFound):
        probe_size(tmp_path / "missing.png")


def test_error_types_are_stable_and_rebuildable() -> None:
    assert set(errors.ERROR_TYPES) == {
        "not_found",
        "empty_file",
        "not_an_image",
        "unsupported_format",
        "truncated",
        "too_many_pixels",
        "decode_error",
        "image_timeout",
        "out_of_memory",
        "too_large",
        "io_error",
        "not_a_file",
        "unsupported_scheme",
        "download_error",
        "download_timeout",
        "blocked_address",
        "permission_denied",  # an object store refused the read (batcher.stores, issue 18)
    }
    for error_type in errors.ERROR_TYPES:
        rebuilt = error_from_type(error_type, "x: why")
        assert rebuilt.error_type == error_type and str(rebuilt) == "x: why"
    assert error_from_type("weird", "m").error_type == "decode_error"
