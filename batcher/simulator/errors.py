"""Errors the simulator answers with, in the API's JSON shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batcher import facts


class ApiError(Exception):
    """An error response: raised anywhere in a handler, rendered by the app."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or facts.ERROR_TYPES.get(status, "api_error")
        self.headers = dict(headers or {})
        self.details = dict(details) if details else None

    def body(self, request_id: str) -> dict[str, Any]:
        if self.status == 413:
            # Over-size bodies are refused by a proxy in front of the API: no request_id, and
            # not the usual envelope (clients must parse errors defensively).
            return {"error": {"type": self.error_type, "message": self.message}}
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"type": "error", "error": error, "request_id": request_id}


def invalid(path: str, message: str) -> ApiError:
    """A 400 that names the failing path, as the API does (``messages.0.content.1.source: ...``)."""
    return ApiError(400, f"{path}: {message}" if path else message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)
