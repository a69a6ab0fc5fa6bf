"""The client's exception hierarchy: one tree, documented, decided by :mod:`batcher.facts`; its
root is a :class:`batcher.errors.BatcherError` (the package's tree: see :mod:`batcher.errors`).

::

    APIError
    ├── APIConnectionError          the request may or may not have reached the API (retryable)
    │   └── APITimeoutError         error type ``api_timeout`` (an image worker's is ``image_timeout``)
    ├── APIResponseError            a response that is not what the API documents (retryable)
    └── APIStatusError              an HTTP error answer; ``retryable`` from facts.should_retry
        ├── BadRequestError         400: final for the row
        ├── AuthenticationError     401: fatal for the job
        ├── BillingError            402: fatal for the job
        ├── PermissionDeniedError   403
        ├── NotFoundError           404 (a file id: upload again)
        ├── RequestTooLargeError    413
        ├── RateLimitError          429 (``retry_after``)
        ├── SpendLimitError         enforced_spend_limit_reached (a 429 or 400): fatal for the job
        ├── OverloadedError         529
        └── ServerError             5xx
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

from batcher import facts
from batcher.errors import API_TIMEOUT, BatcherError


class APIError(BatcherError):
    """Anything that went wrong talking to the API."""

    retryable: bool = False
    #: stop the whole job: nothing else it sends can succeed either
    fatal: bool = False
    error_type: str = "api_error"


class APIConnectionError(APIError):
    retryable = True
    error_type = "connection_error"


class APITimeoutError(APIConnectionError):
    error_type = API_TIMEOUT


class APIResponseError(APIError):
    retryable = True
    error_type = "bad_response"


class APIStatusError(APIError):
    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        request_id: str | None,
        headers: Mapping[str, str],
        error_code: str | None = None,
    ) -> None:
        # The error code names what a bare type would not (a 429 that is a spend limit, not a rate).
        code = f" ({error_code})" if error_code else ""
        super().__init__(f"{status} {error_type}{code}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message
        self.request_id = request_id
        self.headers = dict(headers)
        self.error_code = error_code
        self.retryable = facts.should_retry(status, headers.get("x-should-retry"), error_code)
        #: the body was the API's own error envelope (not a proxy's or gateway's page): see
        #: :func:`is_api_error_body`; set by :func:`from_response`
        self.api_shaped = True

    @property
    def retry_after(self) -> float | None:
        """Seconds the API asked us to wait (``retry-after-ms`` or ``retry-after``), if it did."""
        return retry_after_seconds(self.headers)


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    fatal = True


class BillingError(APIStatusError):
    fatal = True


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class RequestTooLargeError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class SpendLimitError(APIStatusError):
    fatal = True


class OverloadedError(APIStatusError):
    pass


class ServerError(APIStatusError):
    pass


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: BillingError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: RequestTooLargeError,
    429: RateLimitError,
    529: OverloadedError,
}


def status_error_class(status: int) -> type[APIStatusError]:
    """The error class of an HTTP error status (what :func:`from_response` makes)."""
    return _BY_STATUS.get(status, ServerError if status >= 500 else APIStatusError)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms``, else ``retry-after`` as seconds or an HTTP date; None when absent."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def is_api_error_body(body: Any) -> bool:
    """The API's own error envelope, ``{"type": "error", "error": {"type": T, "message": M}}``: a
    404 in that shape is the API's word; one in any other shape comes from whatever stands in
    front of it (a gateway or proxy without the route)."""
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict)
        and body.get("type") == "error"
        and isinstance(error.get("type"), str)
        and isinstance(error.get("message"), str)
    )


def from_response(status: int, body: Any, headers: Mapping[str, str]) -> APIStatusError:
    """The typed error for an error answer; tolerant of bodies not in the usual shape (413)."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    error_type = str(error.get("type") or facts.ERROR_TYPES.get(status, "api_error"))
    message = str(error.get("message") or (body if isinstance(body, str) else "") or f"HTTP {status}")
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    code = details.get("error_code") if details else None
    request_id = headers.get("request-id") or (body.get("request_id") if isinstance(body, dict) else None)
    cls = status_error_class(status)
    if code == facts.SPEND_LIMIT_CODE:
        cls = SpendLimitError
    exc = cls(status, error_type, message, request_id=request_id, headers=headers, error_code=code)
    exc.api_shaped = is_api_error_body(body)
    return exc
