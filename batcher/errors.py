"""batcher's errors: one tree under :class:`BatcherError`, and the one row-failure record.

Two kinds of trouble, two branches. A *job-level* error stops the command: it is a
:class:`JobError` and carries the exit code the command exits with (:mod:`batcher.exits`), so the
CLI maps any of them in one place (``batcher.cli.exit_for``) and the Python API raises them as they
are. A *row-level* error fails one row (an image, an upload, one request): the stage that meets it
turns it into a :class:`RowFailure`, the one shape a row's failure takes on its way to the writer::

    BatcherError
    ├── JobError(exit_code)                     the command stops (job level)
    │   ├── ConfigError (ValueError)            2  batcher.config: the job file
    │   ├── ModelConfigError (ValueError)       2  batcher.models: a model table
    │   ├── UnknownModelError (LookupError)     2  batcher.images.command: ``--model``
    │   ├── ImageConfigError (ValueError)       2  batcher.images.errors: image options
    │   ├── RateLimitConfigError (ValueError)   2  batcher.ratelimit: a tier or preset
    │   ├── ManifestError (ValueError)          2  batcher.manifest: the manifest as a whole
    │   ├── EstimateError                       1  batcher.estimator: ``--exact-sample``
    │   ├── StateError (RuntimeError)           1  batcher.state: the job state
    │   │   ├── DuplicateIds                    2
    │   │   └── AlreadyRunning                  4
    │   ├── SinkError (RuntimeError)            1  batcher.sink: the results folder
    │   ├── PoolError (RuntimeError)            1  batcher.images.pool: the worker pool
    │   ├── StoreError                          1  batcher.stores: a bucket refused (2: an extra missing)
    │   └── RunRefused                          its own: batcher.runner's refusals
    ├── APIError                                batcher.api.errors: one request (``fatal``: the job)
    │   ├── APIConnectionError → APITimeoutError, APIResponseError
    │   ├── APIStatusError → BadRequestError, AuthenticationError, ... (one per API error type)
    │   └── MissingKeyError → InvalidKeyError  batcher.api.client
    ├── ImageError                              batcher.images.errors: one image (row level)
    └── FilesError → UploadError                batcher.files: one upload (row level)

A few exceptions are control flow inside a run, not errors anyone sees (``GaveUp``, ``Stopped``,
``RowFailed``, ``FatalRunError``): they stay plain ``Exception``.

The simulator (:mod:`batcher.simulator`) keeps errors of its own: it stands in for the API.

A leaf module: it imports nothing of batcher's but :mod:`batcher.exits`, so every module can
derive its errors from it (and ``batcher.records`` its row record) without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from batcher.exits import EXIT_FATAL


class BatcherError(Exception):
    """The root of every error batcher raises (the simulator's aside)."""


class JobError(BatcherError):
    """A job refused or stopped before it could report: a broken job file or manifest, no API key,
    the API refusing the key (401), another run holding the output folder, a disk failure.

    ``str(error)`` is the one line ``batcher`` would print; ``exit_code`` is what it would exit with
    (2 usage or config, 1 fatal, 4 already running: see README's exit codes). A subclass sets its
    usual code as a class attribute; a raise may give another."""

    exit_code: int = EXIT_FATAL

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code
        # Pickled as (message,) plus __dict__: the exit code survives a process boundary (a sync
        # in a process of its own hands its errors to the run).


# --- row failures --------------------------------------------------------------------------------

#: An API request that ran out of time.
API_TIMEOUT: Final = "api_timeout"
#: An image worker that ran out of time (its process was killed).
IMAGE_TIMEOUT: Final = "image_timeout"
#: An image that could not be uploaded to the Files API.
UPLOAD_FAILED: Final = "upload_failed"
#: Structured output ([output]): the model declined (stop_reason "refusal"); final.
REFUSAL: Final = "refusal"
#: Structured output: the JSON was cut off at max_tokens; final.
MAX_TOKENS: Final = "max_tokens"
#: Structured output: JSON that does not fit the schema, after the re-asks [output] allows; final.
SCHEMA_MISMATCH: Final = "schema_mismatch"

#: The image errors' types (batcher.images.errors: each subclass of ImageError names one of these;
#: a test holds the two to each other).
_IMAGE_TYPES: Final = (
    "image_error",
    "not_found",
    "empty_file",
    "not_an_image",
    "unsupported_format",
    "truncated",
    "too_many_pixels",
    "decode_error",
    IMAGE_TIMEOUT,
    "out_of_memory",
    "too_large",
    "io_error",
    "not_a_file",
    "unsupported_scheme",
    "download_error",
    "download_timeout",
    "blocked_address",
    "permission_denied",
)

#: The API's own error types (batcher.facts.ERROR_TYPES; a test holds the two to each other).
_API_TYPES: Final = (
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "conflict_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
)

#: Every ``error_type`` a row may end with, and the stage it comes from: the one registry.
#: the Ray engine (batcher.engines): the worker that held the row died twice; a worker failed on it
WORKER_LOST: Final = "worker_lost"
WORKER_ERROR: Final = "worker_error"

ROW_ERROR_TYPES: Final[dict[str, str]] = {
    # the manifest: a row bad at read time
    "bad_row": "row",
    "template_error": "row",
    # images: preparation and downloads (batcher.images.errors)
    **{kind: "image" for kind in _IMAGE_TYPES},
    # the Files API transport
    UPLOAD_FAILED: "upload",
    # the request: the API's own error types, and the client's
    **{kind: "api" for kind in _API_TYPES},
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
    # the Ray engine: the worker holding the row died (again), or failed on it (left for the next run)
    WORKER_LOST: "engine",
    WORKER_ERROR: "engine",
    # structured output: an answer that is not the JSON asked for (batcher.output; all final)
    REFUSAL: "output",
    MAX_TOKENS: "output",
    SCHEMA_MISMATCH: "output",
}


@dataclass(frozen=True, slots=True)
class RowFailure:
    """Why a row has no answer, whichever stage found it: the manifest (a row bad as read), the
    image preparer, the upload, the request or a batch's result line.

    ``error_type`` is one of :data:`ROW_ERROR_TYPES`; ``message`` is for people; ``retryable``:
    the next run may succeed (the row is left for it, not recorded as an error)."""

    error_type: str
    message: str
    #: the next run may succeed: the row is left for it, not recorded as an error
    retryable: bool = False
    #: the image (1-based) the failure is about; None: the row as a whole
    image_index: int | None = None
    #: requests made for the row in this run
    attempts: int = 0

    #: where each error type comes from (the registry), for checks and reports
    registry: ClassVar[dict[str, str]] = ROW_ERROR_TYPES

    @property
    def stage(self) -> str | None:
        """The stage the error type belongs to (``row``, ``image``, ``upload``, ``api``, ``batch``,
        ``output``)."""
        return ROW_ERROR_TYPES.get(self.error_type)
