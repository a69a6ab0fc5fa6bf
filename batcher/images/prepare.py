"""One image in, the bytes to send out: the job's whole preprocessing of a file.

:func:`prepare_file` reads a file (or bytes), checks that it ends where its structure says
(:mod:`batcher.images.structure`), sizes it for the model (:mod:`batcher.images.sizing`), decodes it
safely (:mod:`batcher.images.decode`) and encodes it (:mod:`batcher.images.encode`), or raises an
:class:`~batcher.images.errors.ImageError` whose ``error_type`` goes on the file's row. A file cut
short is ``truncated`` (decoded or not); with ``allow_truncated`` it is decoded leniently and always
re-encoded, never sent as it is.
It runs in the caller's process with no time or memory bound: jobs run it through
:class:`batcher.images.pool.ImagePool`, which adds both.

:func:`probe_size` reads only a header: ``batcher estimate`` gets the exact dimensions (hence the
exact tokens) batcher will send without decoding any pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from batcher import facts
from batcher.images import decode, encode, structure
from batcher.images.errors import DecodeError, Truncated
from batcher.images.sizing import ImageOptions, check_options, image_tokens, target_size
from batcher.models import ModelProfile


@dataclass
class PreparedImage:
    """What goes into the request for one image, and what the results row says about it."""

    data: bytes
    media_type: str
    width: int
    height: int
    source_width: int
    source_height: int
    source_format: str
    tokens: int
    passthrough: bool
    warnings: list[str] = field(default_factory=list)
    sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (crosses process boundaries and is rebuilt by :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> PreparedImage:
        return cls(**fields)


def prepare_file(
    source: Path | str | bytes,
    profile: ModelProfile,
    options: ImageOptions | None = None,
    images_in_request: int = 1,
) -> PreparedImage:
    """Prepare one image for ``profile``; raises an ``ImageError`` subclass naming what went wrong.

    The source size is measured upright (after EXIF orientation); the output is upright, at
    :func:`~batcher.images.sizing.target_size` (smaller only if the byte limit forced it).
    Raises :class:`~batcher.images.errors.ImageConfigError` if ``options`` do not suit the model.
    """
    options = options or ImageOptions()
    check_options(profile, options)
    data, label = decode.read_source(source)
    try:
        return _prepare_bytes(data, label, profile, options, images_in_request, lenient=False)
    except Truncated:
        if not options.allow_truncated:
            raise
    # Decoded strictly first, so a truncated file is known as such: it is re-encoded, with a warning.
    return _prepare_bytes(data, label, profile, options, images_in_request, lenient=True)


def _prepare_bytes(
    data: bytes,
    label: str,
    profile: ModelProfile,
    options: ImageOptions,
    images_in_request: int,
    *,
    lenient: bool,
) -> PreparedImage:
    # Where the file's own structure ends: a file cut short is ``truncated`` even where its decoder
    # reads it without complaint (a PNG without IEND) or says only "broken data stream" (JPEG 2000).
    ending = structure.examine(data)
    with decode.pillow_limits(options, lenient=lenient), _truncated_if(ending, label, lenient=lenient):
        opened = decode.open_image(data, label, options)
        try:
            if ending.truncated and not lenient:
                raise Truncated(f"{label}: the file ends early ({ending.reason})")
            if lenient:
                opened.warnings.append("truncated_accepted")
            return _prepare_opened(opened, data, ending, profile, options, images_in_request, lenient=lenient)
        finally:
            opened.image.close()


@contextmanager
def _truncated_if(ending: structure.Ending, label: str, *, lenient: bool) -> Iterator[None]:
    """A decoder failure on a file whose structure is cut short is ``truncated``, not ``decode_error``."""
    try:
        yield
    except DecodeError as exc:
        if not ending.truncated:
            raise
        even = " and cannot be decoded even with allow_truncated" if lenient else ""
        raise Truncated(f"{label}: the file ends early ({ending.reason}){even}: {exc.message}") from None


def _prepare_opened(
    opened: decode.Opened,
    data: bytes,
    ending: structure.Ending,
    profile: ModelProfile,
    options: ImageOptions,
    images_in_request: int,
    *,
    lenient: bool,
) -> PreparedImage:
    source_w, source_h = opened.upright_size
    target = target_size(profile, source_w, source_h, options=options, images_in_request=images_in_request)
    stored_mode = opened.image.mode
    passthrough_type = None
    if not lenient and ending.complete and not ending.animated:  # as they are: whole, and one frame
        with decode.translate_errors(opened.label):
            passthrough_type = encode.passthrough_media_type(opened, data, target, options, stored_mode)
    decoded = decode.decode_to_size(opened, target)  # also proves a passthrough file decodes fully
    if passthrough_type is not None:
        out = encode.Encoded(data, passthrough_type, *target)
    else:
        out = encode.encode(decoded, options, opened.label)
    notes = [*opened.warnings, *out.warnings]
    if min(out.width, out.height) < facts.SMALL_IMAGE_EDGE:
        notes.append("small_image")
    return PreparedImage(
        data=out.data,
        media_type=out.media_type,
        width=out.width,
        height=out.height,
        source_width=source_w,
        source_height=source_h,
        source_format=opened.format,
        tokens=image_tokens(profile, out.width, out.height),
        passthrough=passthrough_type is not None,
        warnings=notes,
        sha256=hashlib.sha256(out.data).hexdigest(),
    )


def probe_size(path: Path | str | bytes, options: ImageOptions | None = None) -> tuple[int, int, str]:
    """The upright ``(width, height, format)`` of an image from its header alone (EXIF applied).

    Raises the same ``ImageError`` types as :func:`prepare_file` for what a header can reveal
    (missing, empty, not an image, refused format, too many pixels, and ``truncated`` where the
    decoder fails on a file cut short).
    """
    options = options or ImageOptions()
    if isinstance(path, bytes):
        data, label = decode.read_source(path)
        source: bytes | BinaryIO = data
    else:
        source, label = decode.open_header(path)
    try:
        with decode.pillow_limits(options):
            opened = decode.open_image(source, label, options, header_only=True)
            width, height = opened.upright_size
            opened.image.close()
            return width, height, opened.format
    except DecodeError as exc:
        # Some decoders read the whole file to parse a header (WebP): cut short, that is ``truncated``.
        whole = source if isinstance(source, bytes) else decode.read_source(path)[0]
        ending = structure.examine(whole)
        if ending.truncated:
            raise Truncated(f"{label}: the file ends early ({ending.reason}): {exc.message}") from None
        raise
    finally:
        if not isinstance(source, bytes):
            source.close()
