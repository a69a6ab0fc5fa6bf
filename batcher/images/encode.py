"""Turning decoded pixels into bytes the API accepts, within the job's base64 limit.

The rule, in order:

1. **As it is.** A file already compliant is sent byte for byte: JPEG, PNG, GIF or WebP (not MPO,
   whose extra frames are dead weight, nor a JPEG with an MP index Pillow could not read), the bytes
   really of that type, already at the target size, upright (no EXIF rotation to apply), a single
   frame (no APNG animation control, not even one Pillow rejects and reads as a still image), in a
   mode every decoder handles, within the byte limit, decoded completely without error, and ending
   exactly where its structure does (PNG at IEND, GIF at its trailer, WebP at its RIFF size, JPEG at
   EOI: see :mod:`batcher.images.structure`), so no cut-off or padded file goes out as it is (see
   :func:`passthrough_media_type`).
2. **PNG** when the image has real transparency (alpha below 255 somewhere) or is a graphic (a
   paletted or bilevel source, or one with at most 256 colours): lossless, and small for flat colour.
3. **JPEG** otherwise (photos), quality ``options.jpeg_quality`` (85) with optimised Huffman tables.
   A PNG over the limit becomes a JPEG too, transparency flattened on white.
4. **To fit** the limit: lower the JPEG quality step by step, then shrink the image by 20% a step,
   until the base64 string fits; below :data:`MIN_EDGE` pixels it is ``too_large``.

The media type returned always comes from the encoder that wrote the bytes, so it matches them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image

from batcher import facts
from batcher.images.decode import Decoded, Opened
from batcher.images.errors import TooLarge
from batcher.images.sizing import ImageOptions, fits_b64

#: Pillow formats that may go to the API as they are, with the modes that may.
PASSTHROUGH_MODES: dict[str, frozenset[str]] = {
    "JPEG": frozenset({"L", "RGB"}),
    "PNG": frozenset({"1", "L", "LA", "P", "RGB", "RGBA"}),
    "GIF": frozenset({"L", "P"}),
    "WEBP": frozenset({"RGB", "RGBA"}),
}
MEDIA_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
}
#: Qualities tried, in order, after the job's own, while a JPEG is over the byte limit.
FALLBACK_QUALITIES = (75, 60, 45)
#: Each shrink step keeps this share of each side.
SHRINK_STEP = 0.8
#: Below this many pixels on the long side, shrinking further is pointless: ``too_large``.
MIN_EDGE = 64
WHITE = 255


@dataclass
class Encoded:
    data: bytes
    media_type: str
    width: int
    height: int
    warnings: list[str] = field(default_factory=list)


def passthrough_media_type(
    opened: Opened, data: bytes, target: tuple[int, int], options: ImageOptions, stored_mode: str
) -> str | None:
    """The media type to send ``data`` as it is under, or None if it must be re-encoded.

    ``stored_mode`` is the mode the header declared (before any conversion). The caller must have
    checked that the bytes end where their structure does (:func:`batcher.images.structure.examine`)
    and must still decode the file completely before sending it: a truncated file is never passed
    through.
    """
    media_type = MEDIA_TYPES.get(opened.format)
    if media_type is None or facts.sniff_media_type(data[:16]) != media_type:
        return None
    if stored_mode not in PASSTHROUGH_MODES[opened.format]:
        return None
    if opened.orientation != 1 or opened.stored_size != target:
        return None
    if not fits_b64(len(data), options):
        return None
    if getattr(opened.image, "is_animated", False):
        return None
    if "mp" in opened.image.info:
        # A JPEG with an MP index that Pillow could not read (it then decodes the first image as a
        # plain JPEG): the other images are still in the bytes, dead weight as in any MPO.
        return None
    return media_type


def encode(decoded: Decoded, options: ImageOptions, label: str) -> Encoded:
    """Encode ``decoded`` by the rule above; raises :class:`TooLarge` if nothing fits."""
    image = decoded.image
    has_alpha = image.mode in ("LA", "RGBA")
    notes: list[str] = []
    if has_alpha or decoded.few_colours:
        png = _save(image, "PNG", decoded.icc_profile)
        if fits_b64(len(png), options):
            return Encoded(png, "image/png", *image.size)
        notes.append("png_over_limit_sent_as_jpeg")
    if has_alpha:
        image = flatten_on_white(image)
    encoded = _jpeg_to_fit(image, decoded.icc_profile, options, label)
    encoded.warnings[:0] = notes
    return encoded


def flatten_on_white(image: Image.Image) -> Image.Image:
    """Composite an LA/RGBA image over white (JPEG has no alpha; white is how viewers show it)."""
    base = "L" if image.mode == "LA" else "RGB"
    # A bare int fills only the first band of an RGB image (255 is red): white is given per band.
    flat = Image.new(base, image.size, WHITE if base == "L" else (WHITE, WHITE, WHITE))
    flat.paste(image.convert(base), mask=image.getchannel("A"))
    return flat


def _jpeg_to_fit(image: Image.Image, icc: bytes | None, options: ImageOptions, label: str) -> Encoded:
    qualities = [options.jpeg_quality, *(q for q in FALLBACK_QUALITIES if q < options.jpeg_quality)]
    for quality in qualities:
        data = _save(image, "JPEG", icc, quality=quality)
        if fits_b64(len(data), options):
            notes = [] if quality == options.jpeg_quality else [f"quality_lowered_to_{quality}"]
            return Encoded(data, "image/jpeg", *image.size, notes)
    width, height = image.size
    while True:
        width, height = int(width * SHRINK_STEP), int(height * SHRINK_STEP)
        if max(width, height) < MIN_EDGE or min(width, height) < 1:
            raise TooLarge(
                f"{label}: no JPEG of it fits {options.max_b64_bytes:,} bytes of base64, even at "
                f"quality {qualities[-1]} and under {MIN_EDGE} px"
            )
        small = image.resize((width, height), Image.Resampling.LANCZOS)
        data = _save(small, "JPEG", icc, quality=qualities[-1])
        if fits_b64(len(data), options):
            return Encoded(data, "image/jpeg", width, height, ["shrunk_to_fit_byte_limit"])


def _save(image: Image.Image, fmt: str, icc: bytes | None, **params: object) -> bytes:
    buffer = io.BytesIO()
    if icc:
        params["icc_profile"] = icc
    if fmt == "JPEG":
        params["optimize"] = True
    else:
        params["compress_level"] = 6
    image.save(buffer, fmt, **params)
    return buffer.getvalue()
