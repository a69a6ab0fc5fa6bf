"""Row failures: the stages' errors made into the one record, :class:`batcher.errors.RowFailure`.

A row fails before its request (a bad row as read, a bad image, a failed download or upload) or in
it (an answer the API refuses, retries used up, a batch result line). Each failure is a
:class:`RowFailure`: an ``error_type`` from the one registry (:data:`batcher.errors.ROW_ERROR_TYPES`),
a message for people, whether the next run may succeed (``retryable``: the row is left for it, a
:class:`~batcher.core.outcomes.Transient`), and the image it is about. The stage turns it into the
row's outcome with :func:`failure_outcome`.

Two timeouts are two names: an image worker that ran out of time is ``image_timeout``, an API
request that did is ``api_timeout``, so ``batcher status`` counts them apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from batcher.api import errors
from batcher.core.outcomes import Outcome, Transient
from batcher.errors import API_TIMEOUT, ROW_ERROR_TYPES, UPLOAD_FAILED, RowFailure
from batcher.files import UploadError
from batcher.images.errors import ImageError, without_label
from batcher.models import ModelProfile
from batcher.records import ImageSent, Result, Row

__all__ = [
    "API_TIMEOUT",
    "ROW_ERROR_TYPES",
    "UPLOAD_FAILED",
    "RowFailure",
    "api_error_type",
    "api_failure",
    "failure_outcome",
    "image_failure",
    "upload_failure",
]


def api_error_type(exc: errors.APIError) -> str:
    """The registry's name for an API error (its timeout is ``api_timeout``, not an image's)."""
    return exc.error_type


def failure_outcome(
    failure: RowFailure,
    row: Row,
    profile: ModelProfile | None,
    *,
    mode: Literal["online", "batch"] = "online",
) -> Outcome:
    """The row's outcome: left for the next run, or a final ``error`` row (no model for a row bad
    as read: nothing was sent for it)."""
    if failure.retryable:
        return Transient(row.id, failure.error_type, failure.message, failure.attempts)
    return Result(
        id=row.id,
        status="error",
        model=profile.id if profile is not None else None,
        error_type=failure.error_type,
        error_message=failure.message,
        fields=dict(row.fields),
        images=[ImageSent(source=s) for s in row.images],
        mode=mode,
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
