"""Reading untrusted image files with Pillow: allowlisted decoders, bounded, upright, 8-bit.

Every file is hostile until decoded:

* Only decoders on :data:`ALLOWED_FORMATS` run: formats decoded inside Pillow (or libheif through
  pillow-heif). Nothing that shells out (EPS/PS through Ghostscript, WMF) and none of the scientific
  or game formats (FITS, GRIB, DDS, BLP, FLI, PSD...) whose decoders are rarely exercised. A file that
  Pillow recognises in another format is ``unsupported_format``; one nobody recognises is
  ``not_an_image``. Identifying a refused format only parses its header; its decoder never runs.
* More pixels than ``options.max_pixels`` is ``too_many_pixels`` before any pixel is decoded; Pillow's
  own bomb warning is an error too.
* A truncated file is ``truncated``: when Pillow says so, and when the file's structure ends early
  even if Pillow decodes it (checked by :mod:`batcher.images.structure`). With
  ``options.allow_truncated`` the caller decodes it again leniently (Pillow then fills what is
  missing) and never sends its bytes as they are.

Pillow keeps the bomb limit and the truncation switch in globals: :func:`pillow_limits` sets them for
one call under a lock and restores them, so calls in one process never see each other's options
(calls from several threads serialise on that lock; the worker pool gives the parallelism).

Speed: a JPEG is decoded through DCT scaling (``Image.draft``) at the smallest power-of-two scale
that still covers the target, then resized, and only then turned upright, so the rotation moves the
small image.

Orientation is applied exactly once. Pillow turns some formats upright itself: a TIFF since Pillow
6.2 on ``load()`` (dropping the tag), and since Pillow 11 its header already reports the upright size;
pillow-heif hands over HEIF images upright with the orientation reset to 1. Rather than trust a version
table, :func:`pillow_orientation` finds out once per process and format what this Pillow does (a tiny
oriented image saved and reopened); each image is then checked too: a TIFF's header size against its
stored width and length tags, and after ``load()`` whether Pillow consumed the tag. Only what Pillow
left undone is done here. Palette and 1-bit images are converted before resampling; CMYK goes through its ICC
profile when it has one; 16-bit and float images are scaled to 8 bits, never clipped.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from PIL import ExifTags, Image, ImageCms, ImageFile, UnidentifiedImageError
from PIL import __version__ as pillow_version

from batcher import urls
from batcher.images.errors import (
    DecodeError,
    EmptyFile,
    ImageError,
    ImageIOError,
    NotAFile,
    NotAnImage,
    NotFound,
    OutOfMemory,
    TooManyPixels,
    Truncated,
    UnsupportedFormat,
    UnsupportedScheme,
)
from batcher.images.sizing import ImageOptions

#: Pillow format names batcher decodes. MPO comes through the JPEG opener (its primary image); HEIF
#: from pillow-heif; AVIF and JPEG2000 from Pillow where it was built with them.
ALLOWED_FORMATS: tuple[str, ...] = (
    "JPEG",
    "PNG",
    "GIF",
    "WEBP",
    "TIFF",
    "BMP",
    "DIB",
    "ICO",
    "PPM",
    "TGA",
    "PCX",
    "JPEG2000",
    "QOI",
    "AVIF",
    "HEIF",
)
#: Modes every later step handles: anything else is converted to one of these first.
STANDARD_MODES = ("L", "LA", "RGB", "RGBA")
#: EXIF orientation -> the transpose that makes the stored image upright (as ImageOps.exif_transpose).
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: The transposes that exchange width and height.
_SWAPPING = frozenset(
    {
        Image.Transpose.TRANSPOSE,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
        Image.Transpose.ROTATE_270,
    }
)
ORIENTATION_TAG = ExifTags.Base.Orientation
#: TIFF's stored width and length tags (the header size Pillow may have swapped).
_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
#: Reduce by whole factors (box filter) first while the image is over this many times the target,
#: then LANCZOS: visually the same as LANCZOS all the way (Pillow's documented trade-off), much faster.
REDUCING_GAP = 3.0

_limits_lock = threading.Lock()
_heif_registered = False


@dataclass(frozen=True)
class PillowOrientation:
    """What this Pillow does by itself with one format's orientation tag."""

    #: ``Image.open`` already reports the upright size (5..8 swap width and height before loading).
    header_upright: bool = False
    #: ``load()`` turns the pixels upright (and removes the tag).
    load_transposes: bool = False


#: Pillow leaves the orientation to the caller (JPEG, PNG, WebP, AVIF... in every version so far).
LEAVES_IT = PillowOrientation()


@dataclass
class Opened:
    """A file whose header has been read: nothing decoded yet."""

    image: Image.Image
    label: str
    format: str
    #: The orientation tag as read before loading (1..8; 1 when absent).
    orientation: int
    warnings: list[str] = field(default_factory=list)
    #: ``image.size`` is already upright (Pillow swapped the header size itself).
    header_upright: bool = False
    #: Pillow is expected to turn the pixels upright in ``load()`` (what it did is checked then).
    pillow_transposes: bool = False

    @property
    def swaps_axes(self) -> bool:
        return self.orientation in (5, 6, 7, 8)

    @property
    def stored_size(self) -> tuple[int, int]:
        """The size of the pixels as stored, before any orientation."""
        w, h = self.image.size
        return (h, w) if self.swaps_axes and self.header_upright else (w, h)

    @property
    def upright_size(self) -> tuple[int, int]:
        """The size once the orientation is applied (what the model sees)."""
        w, h = self.image.size
        return (h, w) if self.swaps_axes and not self.header_upright else (w, h)


@dataclass
class Decoded:
    """Upright pixels at the target size, in one of :data:`STANDARD_MODES`."""

    image: Image.Image
    #: The ICC profile that describes these pixels (None: sRGB is assumed).
    icc_profile: bytes | None
    #: Whether the source had few colours (paletted, bilevel, at most 256 colours): a graphic.
    few_colours: bool


def register_plugins() -> None:
    """Make pillow-heif's HEIF decoder known to Pillow (once per process)."""
    global _heif_registered
    if _heif_registered:
        return
    try:
        import pillow_heif
    except ImportError:  # HEIF files are then unsupported_format or not_an_image, nothing worse
        pass
    else:
        pillow_heif.register_heif_opener()
    _heif_registered = True


def available_formats() -> tuple[str, ...]:
    """The allowed formats this Pillow build (plus pillow-heif) can open."""
    register_plugins()
    Image.init()
    return tuple(fmt for fmt in ALLOWED_FORMATS if fmt in Image.OPEN)


@contextmanager
def pillow_limits(options: ImageOptions, *, lenient: bool = False) -> Iterator[None]:
    """Pillow's bomb limit and truncation switch set for this call only (``lenient``: accept
    truncated data)."""
    with _limits_lock, warnings.catch_warnings():
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS = options.max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
        # Pillow's complaints about odd metadata are noise here; its bomb warning is an error.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


@contextmanager
def _file_errors(label: str) -> Iterator[None]:
    """Opening or reading a file: the OS's errors as the row's typed image errors."""
    try:
        yield
    except FileNotFoundError:
        raise NotFound(f"{label}: no such file") from None
    except OSError as exc:
        raise ImageIOError(f"{label}: cannot read: {exc.strerror or exc}") from None


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def not_a_file_message(mode: int) -> str | None:
    """What a file of ``st_mode`` is when it is not a regular file (None when it is one)."""
    if stat.S_ISREG(mode):
        return None
    what = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return f"{what}, not a regular file: refused before reading"


def open_regular(path: Path | str) -> tuple[BinaryIO, str]:
    """Open an image file for reading, refusing anything but a regular file before reading a byte.

    A FIFO would block the reader for ever, ``/dev/zero`` or ``/dev/urandom`` (or a symlink to one)
    would be read without end: :class:`NotAFile`, the same in the run, ``batcher prepare`` and
    ``batcher estimate``. ``stat`` (through symlinks) refuses before opening, since opening some
    devices has effects; the descriptor is opened non-blocking and checked again with ``fstat``, so a
    FIFO swapped in between the two cannot block the open or slip past the check. A ``scheme://``
    source is refused too (``unsupported_scheme``): it is not a path, whatever its scheme.
    """
    label = str(path)
    refused = urls.unsupported_scheme_message(label)
    if urls.is_url(label):
        refused = "a URL is downloaded by `batcher run`, not read as a file"
    elif urls.is_object(label):
        refused = "an object store URI is fetched by `batcher run`, not read as a file"
    if refused is not None:
        raise UnsupportedScheme(f"{label}: {refused}")
    with _file_errors(label):
        kind = not_a_file_message(os.stat(path).st_mode)
        if kind is not None:
            raise NotAFile(f"{label}: {kind}")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            kind = not_a_file_message(os.fstat(fd).st_mode)
            if kind is not None:
                raise NotAFile(f"{label}: {kind}")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb"), label
        except BaseException:
            os.close(fd)
            raise


def read_source(source: Path | str | bytes) -> tuple[bytes, str]:
    """The file's bytes and a label for messages; missing, empty, unreadable files and anything
    that is not a regular file are errors (see :func:`open_regular`)."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        label = "<bytes>"
    else:
        fp, label = open_regular(source)
        with fp, _file_errors(label):
            data = fp.read()
    if not data:
        raise EmptyFile(f"{label}: the file is empty (0 bytes)")
    return data, label


def open_header(path: Path | str) -> tuple[BinaryIO, str]:
    """An open file for header-only reads (``probe_size``), with the same errors as :func:`read_source`."""
    fp, label = open_regular(path)
    if os.fstat(fp.fileno()).st_size == 0:
        fp.close()
        raise EmptyFile(f"{label}: the file is empty (0 bytes)")
    return fp, label


def open_image(
    source: bytes | BinaryIO, label: str, options: ImageOptions, *, header_only: bool = False
) -> Opened:
    """Parse the header with an allowlisted decoder; call inside :func:`pillow_limits`.

    ``header_only`` (for probing) never decodes pixels, at the price of missing an EXIF chunk that a
    PNG stores after its image data.
    """
    register_plugins()
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    with translate_errors(label):
        try:
            image = Image.open(fp, formats=available_formats())
        except UnidentifiedImageError:
            raise _unidentified(fp, label) from None
        width, height = image.size
        if width < 1 or height < 1:
            raise DecodeError(f"{label}: {image.format} header gives an empty size {width}x{height}")
        if width * height > options.max_pixels:
            raise TooManyPixels(
                f"{label}: {width}x{height} is {width * height:,} pixels, over the limit of "
                f"{options.max_pixels:,} (refused as a possible decompression bomb)"
            )
        if image.format == "PNG" and not header_only:
            # PNG's getexif() loads the pixels to reach chunks after IDAT: load here, where a failure
            # is this file's error, rather than inside the tolerant orientation read below.
            image.load()
        orientation, notes = _orientation(image)
        fmt = str(image.format)
        behaviour = pillow_orientation(fmt) if orientation != 1 else LEAVES_IT
        return Opened(
            image,
            label,
            fmt,
            orientation,
            notes,
            header_upright=_header_upright(image, orientation, behaviour),
            pillow_transposes=behaviour.load_transposes,
        )


@functools.cache
def pillow_orientation(fmt: str) -> PillowOrientation:
    """What this Pillow does itself with ``fmt``'s orientation, found out once per process.

    A 3x2 image tagged with orientation 6 is saved in ``fmt`` and reopened: whether the size reads
    2x3 before and after ``load()`` tells both answers. Where that cannot be learnt (no writer for the
    format, or the plugin resolves the orientation while opening and reports 1, as pillow-heif does),
    the answer falls back to what Pillow is known to do: TIFFs turned upright on load since 6.2, their
    header size upright since 11.0; every other format left to the caller.
    """
    try:
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = 6
        buffer = io.BytesIO()
        Image.new("RGB", (3, 2), (128, 128, 128)).save(buffer, fmt, exif=exif)
        buffer.seek(0)
        with Image.open(buffer) as image:
            if Image.Image.getexif(image).get(ORIENTATION_TAG) == 6:
                header = image.size == (2, 3)
                image.load()
                return PillowOrientation(header_upright=header, load_transposes=image.size == (2, 3))
    except Exception:  # no writer, or no EXIF support, for this format: use what is known
        pass
    return _known_orientation(fmt)


def _known_orientation(fmt: str) -> PillowOrientation:
    if fmt != "TIFF":
        return LEAVES_IT
    major = int(pillow_version.split(".")[0])
    return PillowOrientation(header_upright=major >= 11, load_transposes=True)


def _header_upright(image: Image.Image, orientation: int, behaviour: PillowOrientation) -> bool:
    """Whether ``image.size`` is already upright. A TIFF says so itself: its stored width and length
    tags, against the size Pillow reports (this also covers an orientation that only XMP gives, which
    Pillow applies on load without swapping the header size)."""
    if orientation not in (5, 6, 7, 8):
        return False
    tags = getattr(image, "tag_v2", None)
    if tags is not None:
        stored = tags.get(_TIFF_WIDTH), tags.get(_TIFF_LENGTH)
        if all(isinstance(v, int) for v in stored) and stored[0] != stored[1]:
            return image.size == (stored[1], stored[0])
    return behaviour.header_upright


def _unidentified(fp: BinaryIO, label: str) -> ImageError:
    """``unsupported_format`` if Pillow knows the format but batcher refuses it, else ``not_an_image``.

    Only the header is parsed here (no decoder runs): EPS is named without starting Ghostscript.
    """
    try:
        fp.seek(0)
        with Image.open(fp) as other:
            fmt = other.format
    except Exception:  # any parser failure only means the bytes are not a known image
        fmt = None
    if fmt:
        return UnsupportedFormat(
            f"{label}: {fmt} images are not decoded by batcher (allowed: {', '.join(available_formats())})"
        )
    return NotAnImage(f"{label}: not an image file (no image decoder recognises its contents)")


def _orientation(image: Image.Image) -> tuple[int, list[str]]:
    """The EXIF (or XMP) orientation, 1..8; unreadable metadata counts as upright, with a warning."""
    try:
        # Image.getexif reads metadata already parsed from the header (PNG's own override would
        # decode the pixels first, when they are not loaded yet).
        value = Image.Image.getexif(image).get(0x0112, 1)
    except Exception:  # broken EXIF must not cost the image: it is sent as stored
        return 1, ["exif_unreadable"]
    if isinstance(value, int) and 1 <= value <= 8:
        return value, []
    return 1, ["exif_orientation_invalid"]


def decode_to_size(opened: Opened, target: tuple[int, int]) -> Decoded:
    """Decode ``opened`` and return it upright at ``target`` (upright frame) in a standard mode.

    Call inside :func:`pillow_limits`.
    """
    image = opened.image
    tw, th = target
    with translate_errors(opened.label):
        box = None
        if opened.format in ("JPEG", "MPO") and not opened.pillow_transposes:
            stored_target = (th, tw) if opened.swaps_axes else (tw, th)
            if stored_target != image.size:
                drafted = image.draft(image.mode, stored_target)
                if drafted is not None:
                    box = drafted[1]
        image.load()
        transpose = None if _pillow_applied(opened, image) else _TRANSPOSE.get(opened.orientation)
        frame = (th, tw) if transpose in _SWAPPING else (tw, th)  # the target in the loaded pixels' frame
        few = _few_colours(image, opened.format)
        image, icc = _to_standard_mode(image, opened.warnings)
        if image.size != frame or box is not None:
            image = image.resize(frame, Image.Resampling.LANCZOS, box=box, reducing_gap=REDUCING_GAP)
        if transpose is not None:
            image = image.transpose(transpose)
        return Decoded(image, icc, few)


def _pillow_applied(opened: Opened, image: Image.Image) -> bool:
    """Whether ``load()`` turned the pixels upright itself: it then removes the tag it applied."""
    if opened.orientation == 1:
        return False
    try:
        now: object = Image.Image.getexif(image).get(ORIENTATION_TAG, 1)
    except Exception:  # unreadable now means unread by Pillow's own transpose too
        return False
    return now != opened.orientation


def _few_colours(image: Image.Image, fmt: str) -> bool:
    """Whether the source is a graphic rather than a photo (decides PNG over JPEG)."""
    if fmt in ("JPEG", "MPO"):
        return False  # a JPEG was a photo to whoever saved it; it stays lossy
    if image.mode in ("1", "P", "PA"):
        return True
    if image.mode not in STANDARD_MODES:
        return False
    # getcolors gives up as soon as it passes maxcolors: cheap on photos, a full pass on graphics.
    return image.getcolors(maxcolors=256) is not None


def _to_standard_mode(image: Image.Image, notes: list[str]) -> tuple[Image.Image, bytes | None]:
    """Convert any decoded mode to L/LA/RGB/RGBA; returns the ICC profile valid for the result."""
    mode = image.mode
    icc = image.info.get("icc_profile") or None
    if mode == "CMYK":
        return _cmyk_to_rgb(image, icc, notes), None
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _scale_to_8bit(image), None
    if mode == "LAB":
        lab = ImageCms.createProfile("LAB")
        srgb = ImageCms.createProfile("sRGB")
        rgb = ImageCms.profileToProfile(image, lab, srgb, outputMode="RGB")
        assert rgb is not None  # None only in place
        return rgb, None
    if mode in ("1",):
        converted = image.convert("L")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        converted = image.convert("RGBA" if has_alpha else "RGB")
    elif mode == "La":
        converted = image.convert("LA")
    elif mode == "RGBa":
        converted = image.convert("RGBA")
    elif mode in STANDARD_MODES:
        converted = image
    else:  # RGBX, YCbCr, HSV and the rest
        converted = image.convert("RGB")
    if converted.mode in ("L", "RGB") and "transparency" in converted.info:
        # a tRNS colour key on a greyscale or truecolour PNG is real transparency
        converted = converted.convert("LA" if converted.mode == "L" else "RGBA")
    converted = _drop_opaque_alpha(converted)
    return converted, _icc_for(converted, icc)


def _drop_opaque_alpha(image: Image.Image) -> Image.Image:
    """An alpha channel that is 255 everywhere carries nothing: drop it (JPEG stays possible)."""
    if image.mode in ("LA", "RGBA") and image.getchannel("A").getextrema()[0] == 255:
        return image.convert("L" if image.mode == "LA" else "RGB")
    return image


def _icc_for(image: Image.Image, icc: bytes | None) -> bytes | None:
    """Keep a profile only if its colour space matches the pixels (an RGB profile on L is invalid)."""
    if icc is None or len(icc) < 20:
        return None
    space = icc[16:20]
    if image.mode in ("RGB", "RGBA") and space == b"RGB ":
        return icc
    if image.mode in ("L", "LA") and space == b"GRAY":
        return icc
    return None


def _cmyk_to_rgb(image: Image.Image, icc: bytes | None, notes: list[str]) -> Image.Image:
    """CMYK through its embedded ICC profile to sRGB; a naive conversion when it has none."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            rgb = ImageCms.profileToProfile(
                image, source, srgb, renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB"
            )
            assert rgb is not None  # None only in place
            return rgb
        except (ImageCms.PyCMSError, OSError, ValueError):
            notes.append("icc_profile_unusable")
    return image.convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale to 8 bits by scaling, never by clipping.

    ``I;16*``: the full 16-bit range maps to 0..255. ``I`` and ``F``: values already within 0..255
    are kept, within 0..65535 are scaled as 16-bit, anything else is stretched from its min..max.
    """
    if image.mode.startswith("I;16"):
        return image.convert("I").point(lambda v: v * (255 / 65535)).convert("L")
    low, high = cast("tuple[float, float]", image.getextrema())  # one band: its (min, max)
    if low >= 0 and high <= 255:
        scale, offset = 1.0, 0.0
    elif low >= 0 and high <= 65535:
        scale, offset = 255 / 65535, 0.0
    else:
        span = (high - low) or 1
        scale, offset = 255 / span, -low * 255 / span
    return image.point(lambda v: v * scale + offset).convert("L")


@contextmanager
def translate_errors(label: str) -> Iterator[None]:
    """Map whatever a decoder raises to a specific :class:`ImageError` naming the file."""
    try:
        yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(f"{label}: {exc}") from None
    except MemoryError:
        raise OutOfMemory(f"{label}: ran out of memory while decoding") from None
    except Exception as exc:  # every other decoder failure is an error of this file
        raise _classify(label, exc) from None


def _classify(label: str, exc: Exception) -> ImageError:
    """Pillow signals data that ends early and a failed allocation only in its messages."""
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    if "truncated" in lowered or "not enough image data" in lowered:
        return Truncated(f"{label}: the image data ends early ({text})")
    if "out of memory" in lowered:
        return OutOfMemory(f"{label}: {text}")
    if any(word in lowered for word in ("unsupported", "not supported", "not configured")):
        return UnsupportedFormat(f"{label}: a variant of the format that cannot be decoded ({text})")
    if isinstance(exc, OSError):
        return DecodeError(f"{label}: corrupt image data ({text})")
    return DecodeError(f"{label}: the decoder failed ({text})")
