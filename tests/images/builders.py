"""Generated test images: every file the image tests use is made here, deterministically."""

from __future__ import annotations

import io
import random
import struct

from PIL import Image, ImageChops, ImageDraw, ImageOps, ImageStat

#: Quadrant colours of the orientation test pattern, upright: top-left, top-right, bottom-left,
#: bottom-right.
QUADRANTS = ((220, 30, 30), (30, 200, 30), (30, 30, 220), (240, 240, 240))


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def upright_reference(data: bytes) -> Image.Image:
    """The upright image as Pillow itself gives it: full load, then exif_transpose (which knows what
    its plugins did on load): the independent reference for orientation tests."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """The largest per-channel mean absolute difference of two images (0..255)."""
    return max(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean)


def flat(size: tuple[int, int], colour: tuple[int, int, int] = (90, 140, 200)) -> Image.Image:
    return Image.new("RGB", size, colour)


def photo(size: tuple[int, int], seed: int = 0, noise: int = 12) -> Image.Image:
    """Photo-like: a smooth gradient, a few shapes and per-pixel noise (many colours)."""
    width, height = size
    gradient = Image.linear_gradient("L").resize(size)
    image = Image.merge(
        "RGB",
        (gradient, gradient.transpose(Image.Transpose.ROTATE_180), Image.radial_gradient("L").resize(size)),
    )
    rng = random.Random(seed)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(1, width // 3 + 2), y0 + rng.randrange(1, height // 3 + 2)
        draw.ellipse((x0, y0, x1, y1), fill=tuple(rng.randrange(256) for _ in range(3)))
    if noise:
        grain = Image.effect_noise(size, noise).convert("L")
        image = Image.merge("RGB", [Image.blend(band, grain, 0.25) for band in image.split()])
    return image


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Incompressible RGB noise."""
    return Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3))


def quadrants(size: tuple[int, int]) -> Image.Image:
    """The orientation pattern: four solid quadrants of :data:`QUADRANTS`, upright."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    half_w, half_h = width // 2, height // 2
    boxes = (
        (0, 0, half_w, half_h),
        (half_w, 0, width, half_h),
        (0, half_h, half_w, height),
        (half_w, half_h, width, height),
    )
    for box, colour in zip(boxes, QUADRANTS, strict=True):
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
    return image


#: The transform that *stores* an upright image so that EXIF orientation N makes it upright again
#: (the inverse of what the viewer applies).
STORE_FOR_ORIENTATION: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def oriented_jpeg(upright: Image.Image, orientation: int, quality: int = 92) -> bytes:
    """``upright`` stored rotated/flipped with EXIF ``orientation`` saying how to undo it."""
    op = STORE_FOR_ORIENTATION[orientation]
    stored = upright if op is None else upright.transpose(op)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=quality, exif=exif)


def oriented(upright: Image.Image, orientation: int, fmt: str, **params: object) -> bytes:
    """``upright`` stored in ``fmt`` rotated/flipped, with the EXIF (for TIFF: IFD) orientation tag
    saying how to undo it."""
    op = STORE_FOR_ORIENTATION[orientation]
    stored = upright if op is None else upright.transpose(op)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, fmt, exif=exif, **params)


def xmp_orientation(orientation: int) -> bytes:
    """An XMP packet that gives only an orientation (``tiff:Orientation``)."""
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
        b'syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="'
        + str(orientation).encode()
        + b'"/></rdf:RDF></x:xmpmeta>'
    )


def cmyk_icc_profile(paper_lab: tuple[float, float, float] = (60.0, 60.0, 30.0)) -> bytes:
    """A minimal, valid ICC v2 CMYK printer profile (Lab PCS, lut8 A2B0, 2 grid points).

    No ink maps to ``paper_lab`` (reddish by default) instead of white, so an image converted through
    the profile is told apart from a naive CMYK->RGB conversion (which gives white).
    """

    def lab_bytes(lab: tuple[float, float, float]) -> bytes:
        lum, a, b = lab
        return bytes((round(lum * 255 / 100), round(a + 128), round(b + 128)))

    clut = b""
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    if k or (c and m and y):
                        clut += lab_bytes((0, 0, 0))
                    elif not (c or m or y):
                        clut += lab_bytes(paper_lab)
                    else:
                        clut += lab_bytes((50, -40 * c + 60 * m, -50 * c + 70 * y))
    identity = bytes(range(256))
    matrix = b"".join(struct.pack(">i", 65536 if i in (0, 4, 8) else 0) for i in range(9))
    lut8 = b"mft1" + b"\0" * 4 + bytes((4, 3, 2, 0)) + matrix + identity * 4 + clut + identity * 3
    text = b"batcher test CMYK\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 4 + b"\0" * 4 + b"\0" * 67
    wtpt = b"XYZ " + b"\0" * 4 + struct.pack(">iii", round(0.9642 * 65536), 65536, round(0.8249 * 65536))
    cprt = b"text" + b"\0" * 4 + b"public domain\0"
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"cprt", cprt), (b"A2B0", lut8)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        padded = data + b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += padded
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"\0" * 4
        + bytes((2, 0x10, 0, 0))
        + b"prtr"
        + b"CMYK"
        + b"Lab "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 24
        + struct.pack(">I", 0)
        + struct.pack(">iii", round(0.9642 * 65536), 65536, round(0.8249 * 65536))
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body
