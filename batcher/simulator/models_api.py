"""GET /v1/models and /v1/models/{id} (placeholder: being built)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from batcher.simulator.core import Simulator
from batcher.simulator.errors import ApiError


async def list_models(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")


async def get_model(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")
