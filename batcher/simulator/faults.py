"""Latency model and fault injection for messages requests.

Latency: ``base_s + uniform(0, jitter_s) + per_megapixel_s * megapixels + per_output_token_s *
output tokens``; nothing is slept when it comes to 0.

Faults are drawn once per request from ``random.Random(seed)`` (one uniform draw against the
configured shares, in the order overloaded, server_error, gateway_timeout, stall, drop), so a
seed replays the same sequence of fates; jitter draws from its own generator, so turning jitter
on does not change which requests fail. The generators are re-seeded only when the seed changes.

Interface the messages handler relies on:

- ``await FaultInjector.before(cost) -> Fate``: raises ``ApiError`` 529 ``overloaded_error``,
  500 ``api_error`` or 504 ``timeout_error``; a stall sleeps ``stall_s`` and then answers 504
  (any sane client has timed out long before); returns the fate of a request that goes on
  (``Fate.drop``: cut the connection mid-response).
- ``await FaultInjector.delay(cost, output_tokens)``: sleep as long as the latency model says.
- ``FaultInjector.dropped(body: bytes) -> Response``: a response that sends its headers (with the
  full ``content-length``) and half of ``body``, then cuts the connection: an httpx client sees
  ``httpx.RemoteProtocolError``, not an HTTP error.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from batcher.simulator.config import Faults, Latency
from batcher.simulator.core import MessageCost
from batcher.simulator.errors import ApiError

if TYPE_CHECKING:
    from batcher.simulator.ledger import Ledger

#: Fault kinds in draw order; each is a share field of :class:`Faults`.
KINDS: Final = ("overloaded", "server_error", "gateway_timeout", "stall", "drop")
#: Offset between the fault and jitter generators' seeds (any constant keeps them independent).
_JITTER_SEED_OFFSET: Final = 0x5EED


@dataclass
class Fate:
    """What happens to a request that was not failed outright."""

    drop: bool = False


class ConnectionDropped(Exception):
    """Raised by :class:`DroppedResponse` after a partial body so the server aborts the connection.

    Uvicorn closes the transport when an app raises after the response started; its log of that
    is silenced by :class:`QuietDrops`.
    """


class DroppedResponse(Response):
    """A response cut off mid-body: status, headers and ``content-length`` as for the full body,
    then half the bytes, then the TCP connection is closed."""

    media_type = "application/json"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2],
                    "more_body": True})
        raise ConnectionDropped("injected fault: connection cut mid-response")


class QuietDrops(logging.Filter):
    """Drop the server's log records of connections the fault injector cut on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, ConnectionDropped):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


class FaultInjector:
    """Latency and injected failures for live messages requests (see the module docstring)."""

    def __init__(self, faults: Faults, latency: Latency, ledger: Ledger | None = None) -> None:
        self.ledger = ledger
        #: faults injected so far, by kind (also counted in the ledger when there is one)
        self.injected: Counter[str] = Counter()
        self._seed: int | None = None
        self.configure(faults, latency)

    def configure(self, faults: Faults, latency: Latency) -> None:
        """Apply new settings live; re-seed only when the seed changed."""
        _check(faults, latency)
        # Copies: a config edited in place takes effect only through configure(), checked.
        self.faults = dataclasses.replace(faults)
        self.latency = dataclasses.replace(latency)
        if faults.seed != self._seed:
            self._seed = faults.seed
            self._rng = random.Random(faults.seed)
            self._jitter_rng = random.Random(faults.seed + _JITTER_SEED_OFFSET)

    def draw(self) -> str | None:
        """The next request's fault kind (one of :data:`KINDS`), or None for none."""
        f = self.faults
        shares = (f.overloaded, f.server_error, f.gateway_timeout, f.stall, f.drop)
        if not any(shares):
            return None
        x = self._rng.random()
        edge = 0.0
        for kind, share in zip(KINDS, shares, strict=True):
            edge += share
            if x < edge:
                return kind
        return None

    def seconds(self, cost: MessageCost, output_tokens: int) -> float:
        """How long a request takes by the latency model (draws jitter when there is some)."""
        lat = self.latency
        total = lat.base_s + lat.per_megapixel_s * cost.megapixels
        total += lat.per_output_token_s * output_tokens
        if lat.jitter_s:
            total += self._jitter_rng.uniform(0.0, lat.jitter_s)
        return total

    async def before(self, cost: MessageCost) -> Fate:
        """Draw this request's fate: raise an injected error, stall, or let it go on."""
        kind = self.draw()
        if kind is None:
            return Fate()
        self._count(kind)
        if kind == "overloaded":
            raise ApiError(529, "Overloaded", error_type="overloaded_error")
        if kind == "server_error":
            raise ApiError(500, "Internal server error", error_type="api_error")
        if kind == "gateway_timeout":
            raise ApiError(504, "Request timed out", error_type="timeout_error")
        if kind == "stall":
            await anyio.sleep(self.faults.stall_s)
            raise ApiError(504, "Request timed out", error_type="timeout_error")
        return Fate(drop=True)

    async def delay(self, cost: MessageCost, output_tokens: int) -> None:
        """Sleep as long as the latency model says (not at all when that is 0)."""
        seconds = self.seconds(cost, output_tokens)
        if seconds > 0:
            await anyio.sleep(seconds)

    def dropped(self, body: bytes) -> Response:
        """A response that sends part of ``body`` and then cuts the connection."""
        return DroppedResponse(body)

    def _count(self, kind: str) -> None:
        self.injected[kind] += 1
        if self.ledger is not None:
            self.ledger.fault(kind)


def _check(faults: Faults, latency: Latency) -> None:
    """Refuse settings no draw can follow, before anything changes."""
    shares = {kind: getattr(faults, kind) for kind in KINDS}
    for kind, share in shares.items():
        if not 0.0 <= share <= 1.0:
            raise ApiError(400, f"faults.{kind}: a share must be within 0..1, got {share}")
    if sum(shares.values()) > 1.0 + 1e-9:
        raise ApiError(400, f"faults: the shares add up to {sum(shares.values()):g}, more than 1")
    if faults.stall_s < 0:
        raise ApiError(400, f"faults.stall_s: must not be negative, got {faults.stall_s}")
    for name in ("base_s", "jitter_s", "per_megapixel_s", "per_output_token_s"):
        if getattr(latency, name) < 0:
            raise ApiError(400, f"latency.{name}: must not be negative, got {getattr(latency, name)}")
