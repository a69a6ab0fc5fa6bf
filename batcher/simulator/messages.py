"""POST /v1/messages and /v1/messages/count_tokens (placeholder: being built)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from batcher.simulator.core import Simulator
from batcher.simulator.errors import ApiError


async def create(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")


async def count_tokens(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")
