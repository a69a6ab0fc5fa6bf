"""How big each prepared image is, and how many bytes it may take: the one place with these rules.

Pure: no Pillow, no I/O. The rules (issue 4 as amended by issue 9):

* By default an image is prepared at exactly the size the model would resize it to
  (:meth:`ModelProfile.native_size`, the API's own rule from :func:`batcher.facts.api_resize`), so the
  API never resizes it again and coordinates in answers map one to one. An image already within that
  size is left as it is: never upscaled.
* A job may ask for less, never more: ``max_image_tokens`` lowers the model's visual-token budget (the
  API's rule is applied with the lower budget), ``max_edge`` caps the long side in pixels.
* A request carrying more than ``facts.MANY_IMAGES_THRESHOLD`` images: each image also fits
  ``facts.MANY_IMAGES_EDGE`` pixels a side (the API refuses it otherwise).
* Each image's base64 string is at most ``facts.PORTABLE_IMAGE_B64_BYTES`` (5 MB, accepted by every
  platform) unless the job raises it, at most to the model's ``max_image_b64_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

from batcher import facts
from batcher.images.errors import ImageConfigError
from batcher.models import ModelProfile

#: Pixels an image may have before it is refused as a decompression bomb. Large enough for the
#: 100 MP cameras and stitched panoramas users do have; an RGB image this size is ~360 MB decoded.
DEFAULT_MAX_PIXELS = 120_000_000
#: Seconds one image may take to prepare before its worker is killed (a 12 MP JPEG takes ~0.1 s).
DEFAULT_TIMEOUT_S = 30.0
#: Address space a worker may use while preparing one image (RLIMIT_AS; Python and the decoders'
#: libraries take a few hundred MB of it before any pixel is decoded).
DEFAULT_MEMORY_LIMIT_BYTES = 3 * 1024**3
DEFAULT_JPEG_QUALITY = 85


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """A job's image settings (``[images]`` in a job file). The defaults suit every model."""

    #: Cap on the long side in pixels, below the model's native size (None: the model's).
    max_edge: int | None = None
    #: Cap on visual tokens per image, below the model's budget (None: the model's).
    max_image_tokens: int | None = None
    #: Base64 bytes an image may take; above the portable 5 MB only up to the model's limit.
    max_b64_bytes: int = facts.PORTABLE_IMAGE_B64_BYTES
    #: Send what decodes of a truncated file instead of failing it with ``truncated``.
    allow_truncated: bool = False
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    #: Decompression-bomb limit: more pixels than this is a ``too_many_pixels`` error.
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Per-image time bound in the worker pool.
    timeout_s: float = DEFAULT_TIMEOUT_S
    #: Per-image memory bound in the worker pool (None: unbounded).
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES


def check_options(profile: ModelProfile, options: ImageOptions) -> None:
    """Raise :class:`ImageConfigError` naming the option if ``options`` cannot be used with ``profile``."""
    if options.max_edge is not None and options.max_edge < 1:
        raise ImageConfigError(
            f"images.max_edge: must be a positive number of pixels, got {options.max_edge}"
        )
    if options.max_image_tokens is not None and options.max_image_tokens < 1:
        raise ImageConfigError(
            f"images.max_image_tokens: must be a positive number of tokens, got {options.max_image_tokens}"
        )
    if options.max_b64_bytes < 1024:
        raise ImageConfigError(f"images.max_b64_bytes: {options.max_b64_bytes} is too small to hold an image")
    if options.max_b64_bytes > profile.max_image_b64_bytes:
        raise ImageConfigError(
            f"images.max_b64_bytes: {options.max_b64_bytes} is above what {profile.id} accepts "
            f"({profile.max_image_b64_bytes} bytes of base64 an image)"
        )
    if not 1 <= options.jpeg_quality <= 95:
        raise ImageConfigError(f"images.jpeg_quality: must be 1..95, got {options.jpeg_quality}")
    if options.max_pixels < 1:
        raise ImageConfigError(f"images.max_pixels: must be positive, got {options.max_pixels}")
    if options.timeout_s <= 0:
        raise ImageConfigError(f"images.timeout_s: must be positive, got {options.timeout_s}")


def scale_to_edge(width: int, height: int, edge: int) -> tuple[int, int]:
    """The aspect-preserving size whose long side is at most ``edge``; unchanged if already within.

    The short side is floored, as the API's own resize does, so the result never exceeds the ratio.
    """
    if max(width, height) <= edge:
        return width, height
    if width >= height:
        return edge, max(1, edge * height // width)
    return max(1, edge * width // height), edge


def target_size(
    profile: ModelProfile, width: int, height: int, *, options: ImageOptions, images_in_request: int = 1
) -> tuple[int, int]:
    """The size to send an upright ``width`` x ``height`` image at, for this model and job.

    Exactly ``profile.native_size`` unless the job caps it lower or the request carries many images;
    never larger than the image, never larger than the model's native size.
    """
    budget = profile.image_token_budget
    if options.max_image_tokens is not None:
        budget = min(budget, options.max_image_tokens)
    size = facts.api_resize(width, height, profile.native_edge, budget)
    edge = facts.MAX_IMAGE_EDGE
    if options.max_edge is not None:
        edge = min(edge, options.max_edge)
    if images_in_request > facts.MANY_IMAGES_THRESHOLD:
        edge = min(edge, facts.MANY_IMAGES_EDGE)
    if max(size) <= edge:
        return size
    # Shrinking a size the model accepts as is keeps it acceptable (fewer patches, shorter sides);
    # scaling from the original, not from ``size``, avoids compounding the rounding of two resizes.
    return scale_to_edge(width, height, edge)


def image_tokens(profile: ModelProfile, width: int, height: int) -> int:
    """Visual tokens ``profile`` charges for an image sent at ``width`` x ``height`` (patch rule)."""
    return profile.image_tokens(width, height)


def fits_b64(raw_bytes: int, options: ImageOptions) -> bool:
    """Whether ``raw_bytes`` bytes of image stay within the job's base64 limit once encoded."""
    return facts.b64_len(raw_bytes) <= options.max_b64_bytes
