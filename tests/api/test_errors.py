"""The client's error tree: status and body → the right class, retryable and fatal flags."""

from __future__ import annotations

import pytest

from batcher.api import errors


def body(kind: str, message: str = "m", code: str | None = None) -> dict:
    err: dict = {"type": kind, "message": message}
    if code:
        err["details"] = {"error_code": code}
    return {"type": "error", "error": err, "request_id": "req_1"}


@pytest.mark.parametrize(
    ("status", "kind", "cls", "retryable", "fatal"),
    [
        (400, "invalid_request_error", errors.BadRequestError, False, False),
        (401, "authentication_error", errors.AuthenticationError, False, True),
        (402, "billing_error", errors.BillingError, False, True),
        (404, "not_found_error", errors.NotFoundError, False, False),
        (413, "request_too_large", errors.RequestTooLargeError, False, False),
        (429, "rate_limit_error", errors.RateLimitError, True, False),
        (500, "api_error", errors.ServerError, True, False),
        (504, "timeout_error", errors.ServerError, True, False),
        (529, "overloaded_error", errors.OverloadedError, True, False),
    ],
)
def test_status_maps_to_class(status: int, kind: str, cls: type, retryable: bool, fatal: bool) -> None:
    exc = errors.from_response(status, body(kind), {"request-id": "req_1"})
    assert type(exc) is cls
    assert (exc.retryable, exc.fatal, exc.error_type, exc.request_id) == (retryable, fatal, kind, "req_1")


def test_spend_limit_is_fatal_not_retryable() -> None:
    exc = errors.from_response(429, body("rate_limit_error", code="enforced_spend_limit_reached"), {})
    assert isinstance(exc, errors.SpendLimitError) and exc.fatal and not exc.retryable


def test_x_should_retry_overrides() -> None:
    assert errors.from_response(400, body("invalid_request_error"), {"x-should-retry": "true"}).retryable
    assert not errors.from_response(529, body("overloaded_error"), {"x-should-retry": "false"}).retryable


def test_a_413_from_the_proxy_without_the_envelope_parses() -> None:
    exc = errors.from_response(413, {"error": {"type": "request_too_large", "message": "too big"}}, {})
    assert isinstance(exc, errors.RequestTooLargeError) and exc.message == "too big"
    exc = errors.from_response(502, "<html>bad gateway</html>", {})
    assert isinstance(exc, errors.ServerError) and exc.retryable and "bad gateway" in exc.message


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [({"retry-after": "3"}, 3.0), ({"retry-after-ms": "250", "retry-after": "3"}, 0.25), ({}, None)],
)
def test_retry_after(headers: dict, seconds: float | None) -> None:
    assert errors.retry_after_seconds(headers) == seconds
