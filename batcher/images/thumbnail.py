"""A small upright JPEG of an image, for ``batcher report``'s cards.

Made with batcher's own preprocessing (:mod:`batcher.images.decode`): the same allowlisted decoders,
the same pixel limit (a decompression bomb is ``too_many_pixels``), EXIF orientation applied once,
a file whose structure ends early is ``truncated``. The image is shrunk to ``thumb_px`` on its long
edge (never enlarged), transparency flattened on white, and saved as an RGB JPEG at
:data:`THUMB_QUALITY`. Raises the :class:`~batcher.images.errors.ImageError` a results row would
carry; the report runs it in the image pool (:meth:`batcher.images.pool.ImagePool.thumbnail`),
which adds the time and memory bounds.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

from batcher.images import decode, structure
from batcher.images.encode import flatten_on_white
from batcher.images.errors import DecodeError, Truncated
from batcher.images.sizing import ImageOptions, scale_to_edge

#: JPEG quality of a thumbnail: small, and plenty for a contact sheet.
THUMB_QUALITY = 80


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A JPEG thumbnail: its bytes and upright size."""

    data: bytes
    width: int
    height: int

    def data_uri(self) -> str:
        """``data:image/jpeg;base64,...``: what an ``<img src>`` takes, with nothing to fetch."""
        return "data:image/jpeg;base64," + base64.b64encode(self.data).decode("ascii")


def make_thumbnail(
    source: Path | str | bytes, thumb_px: int, options: ImageOptions | None = None
) -> Thumbnail:
    """``source`` upright, at most ``thumb_px`` on its long edge, as a JPEG; raises an ``ImageError``."""
    if thumb_px < 1:
        raise ValueError(f"thumb_px must be at least 1, got {thumb_px}")
    options = options or ImageOptions()
    data, label = decode.read_source(source)
    ending = structure.examine(data)
    with decode.pillow_limits(options):
        try:
            opened = decode.open_image(data, label, options)
        except DecodeError as exc:
            if ending.truncated:
                raise Truncated(f"{label}: the file ends early ({ending.reason}): {exc.message}") from None
            raise
        try:
            if ending.truncated:
                raise Truncated(f"{label}: the file ends early ({ending.reason})")
            target = scale_to_edge(*opened.upright_size, thumb_px)
            decoded = decode.decode_to_size(opened, target)
            image = decoded.image
            icc = decoded.icc_profile if image.mode in ("RGB", "RGBA") else None
            if image.mode in ("LA", "RGBA"):
                image = flatten_on_white(image)
            if image.mode != "RGB":
                image = image.convert("RGB")
            buffer = io.BytesIO()
            with decode.translate_errors(label):
                if icc:
                    image.save(buffer, "JPEG", quality=THUMB_QUALITY, optimize=True, icc_profile=icc)
                else:
                    image.save(buffer, "JPEG", quality=THUMB_QUALITY, optimize=True)
            return Thumbnail(buffer.getvalue(), image.width, image.height)
        finally:
            opened.image.close()
