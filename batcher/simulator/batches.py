"""Message Batches (placeholder: being built)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from batcher.simulator.errors import ApiError

if TYPE_CHECKING:
    from batcher.simulator.core import Simulator


class BatchStore:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim


async def create(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")


async def list_batches(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")


async def retrieve(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")


async def delete(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")


async def cancel(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")


async def results(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")
