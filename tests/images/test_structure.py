"""Whether a file ends where its structure says: the check behind ``truncated`` and pass-through."""

from __future__ import annotations

import pytest
from PIL import Image

from batcher.images.structure import State, examine
from tests.images import builders


def photo_bytes(fmt: str, **params: object) -> bytes:
    return builders.encode(builders.photo((120, 80)), fmt, **params)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (60, 40), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    return builders.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def apng() -> bytes:
    frames = [Image.new("RGB", (60, 40), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    return builders.encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


COMPLETE_FILES = {
    "png": lambda: photo_bytes("PNG"),
    "png-alpha": lambda: builders.encode(builders.photo((120, 80)).convert("RGBA"), "PNG"),
    "apng": apng,
    "gif": lambda: photo_bytes("GIF"),
    "gif-animated": animated_gif,
    "gif87a": lambda: builders.encode(Image.new("L", (30, 20), 7), "GIF"),
    "webp-lossy": lambda: photo_bytes("WEBP"),
    "webp-lossless": lambda: photo_bytes("WEBP", lossless=True),
    "jpeg": lambda: photo_bytes("JPEG"),
    "jpeg-progressive": lambda: photo_bytes("JPEG", progressive=True),
    "jp2": lambda: photo_bytes("JPEG2000"),
    "j2k": lambda: photo_bytes("JPEG2000", no_jp2=True),
    "j2k-tiled": lambda: photo_bytes("JPEG2000", no_jp2=True, tile_size=(32, 32)),
}


@pytest.mark.parametrize("kind", COMPLETE_FILES)
def test_complete_files_are_complete(kind: str) -> None:
    assert examine(COMPLETE_FILES[kind]()).state is State.COMPLETE


@pytest.mark.parametrize("kind", [k for k in COMPLETE_FILES if not k.startswith("jpeg")])
def test_every_cut_at_the_end_is_truncated(kind: str) -> None:
    data = COMPLETE_FILES[kind]()
    for cut in range(1, 41):
        ending = examine(data[:-cut])
        assert ending.state is State.TRUNCATED, (kind, cut, ending)
        assert ending.reason


@pytest.mark.parametrize("kind", [k for k in COMPLETE_FILES if not k.startswith("jpeg")])
def test_cuts_anywhere_are_truncated(kind: str) -> None:
    data = COMPLETE_FILES[kind]()
    for keep in range(len(data) // 7, len(data), max(1, len(data) // 7)):
        assert examine(data[:keep]).state is State.TRUNCATED, (kind, keep)


@pytest.mark.parametrize("kind", ["png", "apng", "gif", "gif-animated", "webp-lossy", "j2k"])
def test_bytes_after_the_end_are_trailing(kind: str) -> None:
    ending = examine(COMPLETE_FILES[kind]() + b"\0\0junk")
    assert ending.state is State.TRAILING and "6 bytes" in ending.reason


def test_jpeg_without_eoi_at_the_end_is_not_complete() -> None:
    data = photo_bytes("JPEG")
    assert examine(data + b"trailer").state is State.UNKNOWN
    assert examine(data[:-2]).state is State.UNKNOWN  # cut: libjpeg reports that one itself


def test_png_with_a_wrong_crc_is_not_complete() -> None:
    data = bytearray(photo_bytes("PNG"))
    crc_of_last_idat = data.rindex(b"IEND") - 8
    data[crc_of_last_idat] ^= 0xFF
    ending = examine(bytes(data))
    assert ending.state is State.UNKNOWN and "CRC" in ending.reason


def test_webp_size_field_is_checked() -> None:
    data = photo_bytes("WEBP")
    ending = examine(data[:-1])
    assert ending.truncated and f"{len(data):,}" in ending.reason


def test_other_formats_are_unknown() -> None:
    for fmt in ("TIFF", "BMP"):
        assert examine(photo_bytes(fmt)).state is State.UNKNOWN
    assert examine(b"hello").state is State.UNKNOWN


def test_animation_is_seen_in_the_structure() -> None:
    assert examine(apng()).animated and examine(animated_gif()).animated
    assert not examine(photo_bytes("PNG")).animated and not examine(photo_bytes("GIF")).animated
