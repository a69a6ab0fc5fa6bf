"""Row failures: one typed record, whichever stage of the core a row fails in.

A row fails before its request (a bad image, a failed download or upload) or in it (an answer the
API refuses, retries used up). Each failure is a :class:`RowFailure`: an ``error_type`` from the
one registry below, a message for people, whether the next run may succeed (``retryable``: the row
is left for it, a :class:`~batcher.core.outcomes.Transient`), and the image it is about. The stage
turns it into the row's outcome with :meth:`RowFailure.outcome`.

Two timeouts are two names: an image worker that ran out of time is ``timeout`` (the image's own
error, as ``batcher prepare`` reports it), an API request that did is ``api_timeout``, so
``batcher status`` counts them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from batcher import facts
from batcher.api import errors
from batcher.core.outcomes import Outcome, Transient
from batcher.files import UploadError
from batcher.images import errors as image_errors
from batcher.images.errors import ImageError, without_label
from batcher.models import ModelProfile
from batcher.records import ImageSent, Result, Row

#: An API request that ran out of time (the image worker's is the image error ``timeout``).
API_TIMEOUT: Final = "api_timeout"
#: An image that could not be uploaded to the Files API.
UPLOAD_FAILED: Final = "upload_failed"


def _image_types() -> dict[str, str]:
    found: dict[str, str] = {}
    todo: list[type[image_errors.ImageError]] = [image_errors.ImageError]
    while todo:
        cls = todo.pop()
        found[cls.error_type] = "image"
        todo.extend(cls.__subclasses__())
    return found


#: Every ``error_type`` a row may end with, and the stage it comes from: the one registry.
ROW_ERROR_TYPES: Final[dict[str, str]] = {
    # the manifest: a row bad at read time
    "bad_row": "row",
    "template_error": "row",
    # images: preparation and downloads (batcher.images.errors)
    **_image_types(),
    # the Files API transport
    UPLOAD_FAILED: "upload",
    # the request: the API's own error types, and the client's
    **{kind: "api" for kind in facts.ERROR_TYPES.values()},
    "api_error": "api",
    "connection_error": "api",
    API_TIMEOUT: "api",
    "bad_response": "api",
    # Message Batches: a request to send again
    "expired": "batch",
    "canceled": "batch",
    "batch_error": "batch",
    "batch_lost": "batch",
    "batch_no_result": "batch",
    "file_gone": "batch",
}


def api_error_type(exc: errors.APIError) -> str:
    """The registry's name for an API error (its timeout is not the image worker's)."""
    return API_TIMEOUT if isinstance(exc, errors.APITimeoutError) else exc.error_type


@dataclass(frozen=True, slots=True)
class RowFailure:
    """Why a row has no answer (see the module doc)."""

    error_type: str
    message: str
    #: the next run may succeed: the row is left for it, not recorded as an error
    retryable: bool = False
    #: the image (1-based) the failure is about; None: the row as a whole
    image_index: int | None = None
    #: requests made for the row in this run
    attempts: int = 0

    def outcome(self, row: Row, profile: ModelProfile) -> Outcome:
        """The row's outcome: left for the next run, or a final ``error`` row."""
        if self.retryable:
            return Transient(row.id, self.error_type, self.message, self.attempts)
        return Result(
            id=row.id,
            status="error",
            model=profile.id,
            error_type=self.error_type,
            error_message=self.message,
            fields=dict(row.fields),
            images=[ImageSent(source=s) for s in row.images],
        )


def image_failure(row: Row, exc: ImageError | UploadError, index: int | None) -> RowFailure:
    """An image (or its upload, when final) that cannot be sent: a final error of the row."""
    where = f"image {index} ({row.images[index - 1]})" if index else "image"
    return RowFailure(
        error_type=exc.error_type,
        message=f"{where}: {_named_once(str(exc), row.images, index)}",
        image_index=index,
    )


def upload_failure(row: Row, exc: UploadError, index: int) -> RowFailure:
    """An image that could not be uploaded: left for the next run (a retryable or job-fatal
    answer), or a final error of the row."""
    if exc.retryable or exc.fatal:
        return RowFailure(
            UPLOAD_FAILED,
            f"image {index} ({row.images[index - 1]}): {exc}",
            retryable=True,
            image_index=index,
        )
    return image_failure(row, exc, index)


def api_failure(exc: errors.APIError, attempts: int) -> RowFailure:
    """A request whose retries ran out in this run (a final refusal is a :func:`results.refused`)."""
    return RowFailure(api_error_type(exc), str(exc), retryable=exc.retryable, attempts=attempts)


def _named_once(message: str, images: list[str], index: int | None) -> str:
    """An image error's message without the path it begins with, when the row's message names
    the image already (``image 1 (path): ...``)."""
    if not index:
        return message
    source = images[index - 1]
    return without_label(message, source, str(Path(source)))
