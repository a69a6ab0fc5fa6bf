"""Latency model and fault injection (placeholder: being built; no faults, no latency for now).

Interface the messages handler relies on (keep it when filling this in):
- ``await FaultInjector.before(cost) -> Fate``: may raise ``ApiError`` (529, 500, 504) or stall;
  returns the fate of a request that goes on (``Fate.drop``: cut the connection mid-response).
- ``await FaultInjector.delay(cost, output_tokens)``: sleep as long as the latency model says.
- ``FaultInjector.dropped(body: bytes) -> Response``: a response that sends part of ``body`` and
  then cuts the connection (the client sees a broken response, not an HTTP error).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import Response

from batcher.simulator.config import Faults, Latency
from batcher.simulator.core import MessageCost


@dataclass
class Fate:
    drop: bool = False


class FaultInjector:
    def __init__(self, faults: Faults, latency: Latency) -> None:
        self.configure(faults, latency)

    def configure(self, faults: Faults, latency: Latency) -> None:
        self.faults = faults
        self.latency = latency

    async def before(self, cost: MessageCost) -> Fate:
        return Fate()

    async def delay(self, cost: MessageCost, output_tokens: int) -> None:
        return None

    def dropped(self, body: bytes) -> Response:
        raise NotImplementedError
