"""The Files API (placeholder: being built)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from batcher.simulator.errors import ApiError

if TYPE_CHECKING:
    from batcher.simulator.core import Simulator


class FileStore:
    """Uploaded files. ``image_bytes(file_id)`` is what messages validation relies on."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def image_bytes(self, file_id: str) -> tuple[bytes, str] | None:
        """The stored bytes and mime type of a live file, or None (unknown, deleted, expired)."""
        return None


async def upload(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")


async def list_files(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")


async def get_file(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")


async def delete_file(request: Request, sim: Simulator) -> Response:
    raise ApiError(500, "not built yet")
