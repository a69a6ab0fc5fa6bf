"""Why an image could not be prepared: one exception class per failure, each with a stable type.

Every failure to prepare one image is an :class:`ImageError` subclass whose ``error_type`` string is
what a results row, ``batcher prepare --json`` and the job state record. The types are stable: code
and users may match on them. The message names the file and says what was wrong with it.

A job's own image settings that cannot be honoured (e.g. a byte limit above the model's) are an
:class:`ImageConfigError` instead: that is not a property of one file, and the job must not start.
"""

from __future__ import annotations

from typing import ClassVar

from batcher.errors import IMAGE_TIMEOUT, ROW_ERROR_TYPES, BatcherError, JobError
from batcher.exits import EXIT_CONFIG


class ImageConfigError(JobError, ValueError):
    """The job's image options cannot be used with this model; the message names the option."""

    exit_code = EXIT_CONFIG


class ImageError(BatcherError):
    """One image could not be prepared. ``error_type`` is stable; ``str(exc)`` is for people."""

    error_type: ClassVar[str] = "image_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # Every image error type is in the one registry of row error types (batcher.errors).
        if ROW_ERROR_TYPES.get(cls.error_type) != "image":
            raise TypeError(
                f"{cls.__name__}.error_type {cls.error_type!r} is not an image type in ROW_ERROR_TYPES"
            )


class NotFound(ImageError):
    """The path does not exist."""

    error_type = "not_found"


class EmptyFile(ImageError):
    """The file has zero bytes."""

    error_type = "empty_file"


class NotAnImage(ImageError):
    """No image decoder, allowed or not, recognises the bytes."""

    error_type = "not_an_image"


class UnsupportedFormat(ImageError):
    """A recognised image format that batcher refuses to decode (not on the decoder allowlist)."""

    error_type = "unsupported_format"


class Truncated(ImageError):
    """The image data ends early (accepted only with ``allow_truncated``)."""

    error_type = "truncated"


class TooManyPixels(ImageError):
    """More pixels than the bomb limit: refused before decoding, never merely warned about."""

    error_type = "too_many_pixels"


class DecodeError(ImageError):
    """The decoder failed on corrupt or inconsistent data, or crashed its worker."""

    error_type = "decode_error"


class ImageTimeout(ImageError):
    """Preparing the image took longer than its time bound; its worker was killed."""

    error_type = IMAGE_TIMEOUT


class OutOfMemory(ImageError):
    """Preparing the image needed more memory than its bound."""

    error_type = "out_of_memory"


class TooLarge(ImageError):
    """No encoding of the image fits the base64 byte limit, even shrunk to the smallest size tried."""

    error_type = "too_large"


class ImageIOError(ImageError):
    """The file exists but cannot be read (permissions, an I/O error)."""

    error_type = "io_error"


class NotAFile(ImageError):
    """The path names something other than a regular file (a directory, a FIFO, a device such as
    ``/dev/zero``, a socket), itself or through a symlink: refused before anything is read."""

    error_type = "not_a_file"


class UnsupportedScheme(ImageError):
    """A ``scheme://`` source whose scheme batcher does not fetch (neither http(s) nor an object
    store's: :data:`batcher.urls.OBJECT_SCHEMES`)."""

    error_type = "unsupported_scheme"


class DownloadError(ImageError):
    """An image URL could not be downloaded (an HTTP error, a refused or cut connection...)."""

    error_type = "download_error"


class DownloadTimeout(DownloadError):
    """The download did not finish within ``[images] download_timeout_s`` (redirects included)."""

    error_type = "download_timeout"


class DownloadTooLarge(DownloadError):
    """The download is larger than ``[images] download_max_bytes``."""

    error_type = "too_large"


class BlockedAddress(DownloadError):
    """The URL, or a redirect, leads to a private, loopback, link-local or otherwise non-global
    address, refused unless ``[images] allow_private_urls = true``."""

    error_type = "blocked_address"


class PermissionDenied(ImageError):
    """The object store refused to read the object (403, access denied: ``batcher.stores``). A
    missing object is :class:`NotFound`."""

    error_type = "permission_denied"


ERROR_CLASSES: dict[str, type[ImageError]] = {
    cls.error_type: cls
    for cls in (
        NotFound,
        EmptyFile,
        NotAnImage,
        UnsupportedFormat,
        Truncated,
        TooManyPixels,
        DecodeError,
        ImageTimeout,
        OutOfMemory,
        TooLarge,
        ImageIOError,
        NotAFile,
        UnsupportedScheme,
        DownloadError,
        DownloadTimeout,
        BlockedAddress,
        PermissionDenied,
    )
}
#: Every error type a prepared image may fail with, in a stable order.
ERROR_TYPES: tuple[str, ...] = tuple(ERROR_CLASSES)


def error_from_type(error_type: str, message: str) -> ImageError:
    """Rebuild an error from its type and message (results cross processes as plain data)."""
    cls = ERROR_CLASSES.get(error_type)
    if cls is None:
        return DecodeError(f"{message} (unknown error type {error_type!r})")
    return cls(message)


def without_label(message: str, *labels: str) -> str:
    """``message`` without the leading ``label: `` that every image error begins with (the file it
    is about, or ``<bytes>`` for downloaded data), for a caller that names the image itself:
    otherwise the path is said twice (issue 13)."""
    for label in (*labels, BYTES_LABEL):
        if message.startswith(f"{label}: "):
            return message[len(label) + 2 :]
    return message


#: The label of an image prepared from bytes rather than a file (``decode.read_source``).
BYTES_LABEL = "<bytes>"
