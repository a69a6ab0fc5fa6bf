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
- ``FaultInjector.fatal(method, path) -> ApiError | None``: called by the app for every
  authenticated ``/v1`` request, before any handler or rate limit; the fatal fault it is due for.

Fatal faults stop a job for good, so they are not drawn: each starts after a set number of paid
requests and then stays, as a revoked key or an empty account does. A paid request is a
``POST /v1/messages`` or ``POST /v1/messages/batches`` that passed authentication (whatever its
answer); ``*_after = N`` lets ``N`` of them through, counted from when the setting was last set
(at start or through ``/_control``), and fails the ``N+1``-th and every one after. ``None`` (the
default) never. Checked in this order, the first due one answers:

- ``auth_error_after``: 401 ``authentication_error`` ("invalid x-api-key"); from the request
  that trips it on, *every* ``/v1`` request is refused, paid or not (the key was revoked).
- ``billing_error_after``: 402 ``billing_error`` (credit balance too low) on paid requests.
- ``spend_limit_after``: 429 ``rate_limit_error`` on paid requests, with
  ``error.details = {"error_code": "enforced_spend_limit_reached"}`` and no ``retry-after`` or
  ``x-should-retry``: only the body's ``error_code`` tells a client it must stop (a monthly cap).

Through ``/_control``::

    {"faults": {"auth_error_after": 5}}      # 5 more paid requests, then 401 on all of /v1
    {"faults": {"billing_error_after": 0}}   # the next paid request is a 402
    {"faults": {"spend_limit_after": 3}}     # 3 more, then the spend-limit 429
    {"faults": {"spend_limit_after": null}}  # off again

Answer faults are not errors: the request is answered (and billed), but not as asked. Drawn
from a generator of their own (``seed`` + an offset, so setting them does not change which
requests the error faults above hit), once per answered request, live or inside a batch, through
:meth:`FaultInjector.answer_fault`:

- ``refusal`` (share): ``stop_reason`` "refusal", ``stop_details`` of type "refusal", a short text
  block and no JSON, whatever the request asked for; billed for that text.
- ``mismatch`` (share, structured answers only: ``output_config.format`` or a forced tool): the
  JSON is well-formed and fits the schema as the decoder enforces it (types, required, enum,
  const, supported formats, ``additionalProperties``), but every constraint a decoder cannot
  enforce, and the SDK moves into descriptions, is ignored: integers are -1, numbers -1.5, free
  strings "" (see :func:`batcher.simulator.answers.instance`, ``broken``). Whether that breaks
  the caller's schema depends on its constraints (a ``minimum: 0``, a ``minLength: 1``).
- ``mismatch_first`` (on/off, deterministic): the first structured answer for each distinct set
  of the prompt's nonces (in order of appearance) is a mismatch; later ones for the same nonces
  are normal, so one re-ask of a row succeeds. A refusal does not use up the first answer;
  requests without a nonce are never touched. Switching it on forgets the nonce sets seen before;
  it remembers the last :data:`SEEN_NONCE_SETS` of them.

Every injected fault, drawn, answer or fatal, is counted in the ledger's ``faults`` by kind
(``auth_error``, ``billing_error``, ``spend_limit`` for the fatal ones).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from batcher import facts
from batcher.simulator.config import Faults, Latency
from batcher.simulator.errors import ApiError
from batcher.simulator.records import MessageCost

if TYPE_CHECKING:
    from batcher.simulator.ledger import Ledger

#: Fault kinds in draw order; each is a share field of :class:`Faults`.
KINDS: Final = ("overloaded", "server_error", "gateway_timeout", "stall", "drop")
#: Answer fault kinds, each a share field of :class:`Faults` (``mismatch_first`` is a switch).
ANSWER_KINDS: Final = ("refusal", "mismatch")
#: How many distinct nonce sets ``mismatch_first`` remembers (oldest forgotten first).
SEEN_NONCE_SETS: Final = 100_000
#: Fatal fault kinds in check order; each has a ``{kind}_after`` field of :class:`Faults`.
FATAL_KINDS: Final = ("auth_error", "billing_error", "spend_limit")
#: The requests that cost money: what a fatal fault's ``*_after`` counts.
PAID_ROUTES: Final = frozenset({("POST", "/v1/messages"), ("POST", "/v1/messages/batches")})
#: Offset between the fault and jitter generators' seeds (any constant keeps them independent).
_JITTER_SEED_OFFSET: Final = 0x5EED
_ANSWER_SEED_OFFSET: Final = 0xA115


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
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send(
            {"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True}
        )
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
        #: paid requests seen so far, and the count at which each fatal setting was last set
        self.paid = 0
        self._fatal_base = dict.fromkeys(FATAL_KINDS, 0)
        self._fatal_set: dict[str, int | None] = dict.fromkeys(FATAL_KINDS)
        #: the nonce sets ``mismatch_first`` has answered (a dict: insertion order, oldest first)
        self._seen: dict[tuple[str, ...], None] = {}
        self._answer_lock = threading.Lock()
        self.faults = Faults(seed=-1)
        self.configure(faults, latency)

    def configure(self, faults: Faults, latency: Latency) -> None:
        """Apply new settings live; re-seed only when the seed changed, and restart a fatal
        fault's count only when its setting changed."""
        _check(faults, latency)
        for kind in FATAL_KINDS:
            after = getattr(faults, f"{kind}_after")
            if after != self._fatal_set[kind]:
                self._fatal_set[kind] = after
                self._fatal_base[kind] = self.paid
        self._any_fatal = any(after is not None for after in self._fatal_set.values())
        if faults.mismatch_first and not self.faults.mismatch_first:
            with self._answer_lock:
                self._seen.clear()  # switched on: every row's next structured answer is its first
        # Copies: a config edited in place takes effect only through configure(), checked.
        self.faults = dataclasses.replace(faults)
        self.latency = dataclasses.replace(latency)
        if faults.seed != self._seed:
            self._seed = faults.seed
            self._rng = random.Random(faults.seed)
            self._jitter_rng = random.Random(faults.seed + _JITTER_SEED_OFFSET)
            self._answer_rng = random.Random(faults.seed + _ANSWER_SEED_OFFSET)

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

    def answer_fault(self, nonces: Sequence[str], structured: bool) -> str | None:
        """The answer fault (one of :data:`ANSWER_KINDS`) for a request about to be answered, or
        None; ``structured``: it asks for JSON (a format or a forced tool). See the module
        docstring. Safe from any thread (batches are answered off the event loop)."""
        f = self.faults
        with self._answer_lock:
            kind: str | None = None
            if f.refusal or f.mismatch:
                x = self._answer_rng.random()
                if x < f.refusal:
                    kind = "refusal"
                elif structured and x < f.refusal + f.mismatch:
                    kind = "mismatch"
            if f.mismatch_first and kind != "refusal" and structured and nonces:
                key = tuple(nonces)
                if key not in self._seen:
                    self._seen[key] = None
                    if len(self._seen) > SEEN_NONCE_SETS:
                        del self._seen[next(iter(self._seen))]
                    kind = "mismatch"
            if kind is not None:
                self._count(kind)
        return kind

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

    def fatal(self, method: str, path: str) -> ApiError | None:
        """The fatal fault this authenticated ``/v1`` request is due for, if any (and count a
        paid one); see the module docstring."""
        paid = (method, path) in PAID_ROUTES
        index = self.paid
        if paid:
            self.paid += 1
        if not self._any_fatal:
            return None
        for kind in FATAL_KINDS:
            after = self._fatal_set[kind]
            if after is None:
                continue
            if paid:
                due = index - self._fatal_base[kind] >= after
            else:
                # only a revoked key refuses unpaid requests, once a paid one has tripped it
                due = kind == "auth_error" and self.paid - self._fatal_base[kind] > after
            if due:
                self._count(kind)
                return _fatal_error(kind)
        return None

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


def _fatal_error(kind: str) -> ApiError:
    if kind == "auth_error":
        return ApiError(401, "invalid x-api-key", error_type="authentication_error")
    if kind == "billing_error":
        return ApiError(
            402,
            "Your credit balance is too low to access the Anthropic API. Please "
            "go to Plans & Billing to upgrade or purchase credits.",
            error_type="billing_error",
        )
    today = dt.datetime.now(dt.UTC).date()
    regain = (today.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    return ApiError(
        429,
        f"You have reached your specified API usage limits. You will regain "
        f"access on {regain.isoformat()} at 00:00 UTC.",
        error_type="rate_limit_error",
        details={"error_code": facts.SPEND_LIMIT_CODE},
    )


def _check(faults: Faults, latency: Latency) -> None:
    """Refuse settings no draw can follow, before anything changes."""
    for kind in FATAL_KINDS:
        after = getattr(faults, f"{kind}_after")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
            raise ApiError(
                400,
                f"faults.{kind}_after: must be a whole number of requests (0 or more) or null, got {after!r}",
            )
    for kind in ANSWER_KINDS:
        share = getattr(faults, kind)
        if not 0.0 <= share <= 1.0:
            raise ApiError(400, f"faults.{kind}: a share must be within 0..1, got {share}")
    if faults.refusal + faults.mismatch > 1.0 + 1e-9:
        raise ApiError(
            400, f"faults: refusal and mismatch add up to {faults.refusal + faults.mismatch:g}, more than 1"
        )
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
