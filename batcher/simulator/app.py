"""The simulator's ASGI app: routing, authentication, request ids, the ledger.

The top of the simulator: handlers live beside it, one module per API area (messages, files,
batches, models, control), and none of them imports this module; it only wires them to paths and
wraps every request in the cross-cutting rules every response obeys.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batcher.simulator import batches, control, files, messages, models_api
from batcher.simulator.core import Simulator
from batcher.simulator.errors import ApiError
from batcher.simulator.wire import JSON, new_id

Handler = Callable[[Request, Simulator], Awaitable[Response]]


def error_response(exc: ApiError, request_id: str) -> Response:
    return JSON(exc.body(request_id), status_code=exc.status, headers=exc.headers)


class Gate:
    """Pure-ASGI middleware (cheaper than BaseHTTPMiddleware): request id, auth, ledger."""

    def __init__(self, app: ASGIApp, sim: Simulator) -> None:
        self.app = app
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id("req")
        scope.setdefault("state", {})["request_id"] = request_id
        path: str = scope["path"]
        status_seen = 0

        async def send_wrapped(message: Message) -> None:
            nonlocal status_seen
            if message["type"] == "http.response.start":
                status_seen = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"request-id", request_id.encode()))
                if path.startswith("/v1/"):
                    headers.extend(self.sim.buckets.headers())
                message = {**message, "headers": headers}
            await send(message)

        if not path.startswith("/v1/"):
            await self.app(scope, receive, send_wrapped)
            return
        self.sim.ledger.enter()
        try:
            problem = self._check_headers(scope) or self.sim.faults.fatal(scope["method"], path)
            if problem is not None:
                await error_response(problem, request_id)(scope, receive, send_wrapped)
            else:
                await self.app(scope, receive, send_wrapped)
        finally:
            self.sim.ledger.leave(scope["method"], path, status_seen or 499, time.monotonic())

    def _check_headers(self, scope: Scope) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get("x-api-key")
        if key is None:
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                key = auth[7:].strip()
        if not key:
            return ApiError(401, "x-api-key header is required")
        expected = self.sim.config.api_key
        if expected is not None and key != expected:
            return ApiError(401, "invalid x-api-key")
        if "anthropic-version" not in headers:
            return ApiError(400, "anthropic-version: header is required")
        return None


def _bind(handler: Handler, sim: Simulator) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, sim)
        except ApiError as exc:
            return error_response(exc, request.scope["state"]["request_id"])

    return endpoint


async def _unrouted(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in the API's error shape, like everything else."""
    status = getattr(exc, "status_code", 404)
    message = f"{request.method} {request.url.path}: no such endpoint"
    return error_response(ApiError(status, message), request.scope["state"]["request_id"])


def create_app(sim: Simulator | None = None) -> ASGIApp:
    sim = sim or Simulator()
    table: list[tuple[str, list[str], Handler]] = [
        ("/v1/messages", ["POST"], messages.create),
        ("/v1/messages/count_tokens", ["POST"], messages.count_tokens),
        ("/v1/models", ["GET"], models_api.list_models),
        ("/v1/models/{model_id}", ["GET"], models_api.get_model),
        ("/v1/files", ["POST"], files.upload),
        ("/v1/files", ["GET"], files.list_files),
        ("/v1/files/{file_id}", ["GET"], files.get_file),
        ("/v1/files/{file_id}", ["DELETE"], files.delete_file),
        ("/v1/files/{file_id}/content", ["GET"], files.download_file),
        ("/v1/messages/batches", ["POST"], batches.create),
        ("/v1/messages/batches", ["GET"], batches.list_batches),
        ("/v1/messages/batches/{batch_id}", ["GET"], batches.retrieve),
        ("/v1/messages/batches/{batch_id}", ["DELETE"], batches.delete),
        ("/v1/messages/batches/{batch_id}/cancel", ["POST"], batches.cancel),
        ("/v1/messages/batches/{batch_id}/results", ["GET"], batches.results),
        ("/_ledger", ["GET"], control.ledger),
        ("/_control", ["POST"], control.update),
    ]
    routes = [Route(path, _bind(h, sim), methods=methods) for path, methods, h in table]
    app = Starlette(routes=routes, exception_handlers={404: _unrouted, 405: _unrouted})
    app.state.sim = sim
    return Gate(app, sim)
