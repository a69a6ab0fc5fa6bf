"""Message Batches: create, retrieve, list, cancel, results (JSON lines) and delete.

How a batch moves, on the simulator's batch clock (``SimConfig.batches``):

- ``POST /v1/messages/batches`` checks only the envelope up front, as the API does: the body size
  (``facts.BATCH_MAX_BYTES``, 413), 1..``facts.BATCH_MAX_REQUESTS`` requests, each
  ``{"custom_id", "params"}`` with no other key, ``custom_id`` matching
  ``facts.CUSTOM_ID_PATTERN`` and unique (400 naming ``requests.N.custom_id``), ``params`` an
  object. The one check on the params themselves: a model the registry knows but that lacks the
  ``batch`` capability is refused at once (400 naming ``requests.N.params.model``), as the API
  refuses such a batch; anything else wrong with ``params`` (an unknown model included) comes
  back later as that request's ``errored`` result.
- The batch is processed progressively: its requests are taken in a seeded shuffled order (never
  the submission order when there are two or more), the k-th of n finishing ``duration_s * k / n``
  seconds after creation, so the batch ends ``duration_s`` after it was created. A seeded share
  ``expire_share`` of the requests (rounded) comes back ``expired`` instead of being processed.
  Each processed request goes through the same code as ``POST /v1/messages``
  (:func:`batcher.simulator.messages.process`, without rate limits, faults or latency) with the
  ``anthropic-beta`` values of the create call: an answer is ``succeeded`` and billed (and marked
  in the ledger as billed at the batch price); an ``ApiError`` is ``errored`` and free.
- Work is done in the background, as the API does it: while any batch is unfinished a ticker
  thread wakes every :data:`TICK_S` seconds and processes whatever the clock says is due, so a
  batch advances (and is billed in the ledger) whether or not anyone polls it. Looking at a batch
  (retrieve, list, cancel, results, delete) also processes what is due first, on a worker thread
  so the event loop keeps serving, so an answer never lags the clock by a tick. The ticker stops
  by itself once every batch has ended, and for good on :meth:`BatchStore.close`.
- ``request_counts`` follow the API's documentation: every request counts as ``processing`` until
  the whole batch ends, then the tallies appear at once.
- Cancelling (``in_progress`` only; 400 once ended) moves the batch to ``canceling`` for a tenth of
  its duration (less if it would have ended sooner), while requests already due finish; then the
  rest become ``canceled`` and the batch ends.
- Results (``GET .../results``, ``application/x-jsonl``, in processing order) and ``DELETE`` are
  refused with a 400 until the batch has ended. ``results_url`` points back at this simulator.
- On Bedrock and Vertex the route does not exist (their batch inference is a different API): 404.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from batcher import facts
from batcher.simulator.errors import ApiError, invalid, not_found
from batcher.simulator.files import cursors, page, rfc3339

if TYPE_CHECKING:
    from batcher.simulator.core import Simulator

_log = logging.getLogger(__name__)

#: Share of a batch's duration that cancellation takes to wind down.
_CANCEL_SHARE: Final = 0.1
#: Seconds between two looks of the background ticker at the unfinished batches.
TICK_S: Final = 0.05
#: Bodies larger than this are parsed on a worker thread.
_HEAVY_BODY_BYTES: Final = 1024 * 1024
_OUTCOMES: Final = ("succeeded", "errored", "canceled", "expired")


@dataclass
class BatchRequest:
    custom_id: str
    params: dict[str, Any]
    #: the ``result`` object once decided (succeeded, errored, canceled or expired)
    result: dict[str, Any] | None = None


@dataclass
class Batch:
    id: str
    seq: int
    requests: list[BatchRequest]
    betas: frozenset[str]
    created_at: dt.datetime
    #: monotonic time of creation; request ``order[k]`` is due at ``started + due_s[k]``
    started: float
    duration_s: float
    #: processing order: indices into ``requests``
    order: list[int]
    expiring: frozenset[int]
    #: how many of ``order`` have a result
    done: int = 0
    #: seconds after creation at which cancellation was asked for, and at which it completes
    cancel_at_s: float | None = None
    cancel_done_s: float | None = None
    #: seconds after creation at which the batch ended
    ended_s: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ended(self) -> bool:
        return self.ended_s is not None

    def due_count(self, elapsed_s: float) -> int:
        """How many requests, in processing order, are finished ``elapsed_s`` after creation."""
        n = len(self.order)
        if elapsed_s >= self.duration_s:
            return n
        return min(n, math.floor(n * elapsed_s / self.duration_s))

    def horizon(self, elapsed_s: float) -> float:
        """How far processing has got: the clock, stopped where cancellation completes."""
        return elapsed_s if self.cancel_done_s is None else min(elapsed_s, self.cancel_done_s)

    def at(self, offset_s: float) -> dt.datetime:
        return self.created_at + dt.timedelta(seconds=offset_s)

    def counts(self) -> dict[str, int]:
        """``request_counts``: all ``processing`` until the batch has ended, as the API documents."""
        tallies = dict.fromkeys(("processing", *_OUTCOMES), 0)
        if not self.ended:
            tallies["processing"] = len(self.requests)
            return tallies
        for request in self.requests:
            assert request.result is not None
            tallies[request.result["type"]] += 1
        return tallies

    def status(self) -> str:
        if self.ended:
            return "ended"
        return "in_progress" if self.cancel_at_s is None else "canceling"

    def to_json(self, base_url: str) -> dict[str, Any]:
        """The ``MessageBatch`` object."""
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status(),
            "request_counts": self.counts(),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.at(facts.BATCH_EXPIRY_HOURS * 3600)),
            "ended_at": rfc3339(self.at(self.ended_s)) if self.ended_s is not None else None,
            "cancel_initiated_at": (
                rfc3339(self.at(self.cancel_at_s)) if self.cancel_at_s is not None else None
            ),
            "archived_at": None,
            "results_url": (f"{base_url}/v1/messages/batches/{self.id}/results" if self.ended else None),
        }

    def result_lines(self) -> bytes:
        """The results file: one ``MessageBatchIndividualResponse`` a line, in processing order."""
        lines = []
        for index in self.order:
            request = self.requests[index]
            lines.append(orjson.dumps({"custom_id": request.custom_id, "result": request.result}))
        return b"\n".join(lines) + b"\n"


def processing_order(n: int, rng: random.Random) -> list[int]:
    """A shuffled order of ``n`` requests that is never the submission order (for n >= 2)."""
    order = list(range(n))
    rng.shuffle(order)
    if n >= 2 and order == sorted(order):
        order = order[1:] + order[:1]
    return order


def errored(exc: ApiError) -> dict[str, Any]:
    """The ``ErroredResult`` for a request the API refused."""
    from batcher.simulator.core import new_id

    return {
        "type": "errored",
        "error": {
            "type": "error",
            "error": {"type": exc.error_type, "message": exc.message},
            "request_id": new_id("req"),
        },
    }


class BatchStore:
    """Every batch created on this simulator. ``clock`` (monotonic) may be replaced by tests."""

    def __init__(self, sim: Simulator, clock: Callable[[], float] = time.monotonic) -> None:
        self.sim = sim
        self.clock = clock
        self._batches: dict[str, Batch] = {}
        self._seqs: dict[str, int] = {}
        self._lock = threading.Lock()
        #: the background ticker while any batch is unfinished (see the module docstring)
        self._ticker: threading.Thread | None = None
        self._closed = threading.Event()

    def create(self, requests: list[BatchRequest], betas: frozenset[str]) -> Batch:
        """Start a batch of already checked requests."""
        from batcher.simulator.core import new_id

        clock = self.sim.config.batches
        with self._lock:
            seq = len(self._seqs)
            rng = random.Random(f"{clock.seed}/{seq}")
            n = len(requests)
            expiring = frozenset(rng.sample(range(n), round(n * clock.expire_share)))
            batch = Batch(
                id=new_id("msgbatch"),
                seq=seq,
                requests=requests,
                betas=betas,
                created_at=dt.datetime.now(dt.UTC),
                started=self.clock(),
                duration_s=max(0.0, clock.duration_s),
                order=processing_order(n, rng),
                expiring=expiring,
            )
            self._batches[batch.id] = batch
            self._seqs[batch.id] = seq
            if self._ticker is None and not self._closed.is_set():
                self._ticker = threading.Thread(target=self._tick, name="batcher-sim-batches", daemon=True)
                self._ticker.start()
        return batch

    def close(self) -> None:
        """Stop the background ticker for good (the simulator is shutting down)."""
        self._closed.set()
        with self._lock:
            ticker = self._ticker
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join(timeout=5)

    def _tick(self) -> None:
        """Advance every unfinished batch that has work, until none is left (or closed)."""
        while not self._closed.wait(TICK_S):
            with self._lock:
                pending = [b for b in self._batches.values() if not b.ended]
                if not pending:
                    self._ticker = None  # under the lock: create() starts a new one if needed
                    return
            for batch in pending:
                if self._closed.is_set():
                    break
                try:
                    if self.has_work(batch):
                        self.advance(batch)
                except Exception:  # the next look at the batch raises it where it is seen
                    _log.exception("batch %s: background processing failed", batch.id)
        with self._lock:
            self._ticker = None

    def get(self, batch_id: str) -> Batch | None:
        with self._lock:
            return self._batches.get(batch_id)

    def remove(self, batch_id: str) -> None:
        with self._lock:
            self._batches.pop(batch_id, None)

    def all(self) -> list[Batch]:
        """Every batch not deleted, newest first."""
        with self._lock:
            return sorted(self._batches.values(), key=lambda b: b.seq, reverse=True)

    def seq_of(self, batch_id: str) -> int | None:
        with self._lock:
            return self._seqs.get(batch_id)

    def elapsed(self, batch: Batch) -> float:
        return self.clock() - batch.started

    def has_work(self, batch: Batch) -> bool:
        """Whether looking at the batch now would process something or end it."""
        if batch.ended:
            return False
        elapsed = self.elapsed(batch)
        return (
            batch.due_count(batch.horizon(elapsed)) > batch.done
            or batch.done == len(batch.order)
            or (batch.cancel_done_s is not None and elapsed >= batch.cancel_done_s)
        )

    def advance(self, batch: Batch) -> None:
        """Process whatever is due by now and end the batch when its time has come.

        Blocking (it answers messages bodies): call it from a worker thread on the server.
        """
        with batch.lock:
            if batch.ended:
                return
            elapsed = self.elapsed(batch)
            target = batch.due_count(batch.horizon(elapsed))
            while batch.done < target:
                index = batch.order[batch.done]
                batch.requests[index].result = self._decide(batch, index)
                batch.done += 1
            if batch.done == len(batch.order):
                batch.ended_s = batch.duration_s
            elif batch.cancel_done_s is not None and elapsed >= batch.cancel_done_s:
                self._cancel_rest(batch)

    def cancel(self, batch: Batch) -> None:
        """Start cancelling: 400 once the batch has ended; asking twice changes nothing."""
        self.advance(batch)
        with batch.lock:
            if batch.ended:
                raise invalid("", f"Message Batch {batch.id} has already ended and cannot be canceled")
            if batch.cancel_at_s is not None:
                return
            now = self.elapsed(batch)
            batch.cancel_at_s = now
            batch.cancel_done_s = min(batch.duration_s, now + _CANCEL_SHARE * batch.duration_s)

    def _decide(self, batch: Batch, index: int) -> dict[str, Any]:
        from batcher.simulator.messages import process, record

        if index in batch.expiring:
            return {"type": "expired"}
        try:
            processed = process(batch.requests[index].params, self.sim, betas=batch.betas)
        except ApiError as exc:
            return errored(exc)
        record(self.sim, processed)
        self.sim.ledger.charge_batch(
            input_tokens=processed.input_tokens, output_tokens=processed.output_tokens
        )
        message = processed.message
        if isinstance(message.get("usage"), dict):  # the tier the API reports for batch work
            message = {**message, "usage": {**message["usage"], "service_tier": "batch"}}
        return {"type": "succeeded", "message": message}

    @staticmethod
    def _cancel_rest(batch: Batch) -> None:
        for index in batch.order[batch.done :]:
            batch.requests[index].result = {"type": "canceled"}
        batch.done = len(batch.order)
        batch.ended_s = batch.cancel_done_s


# --- checking a create body (pure) ------------------------------------------------------------------


def check_create(body: Any, sim: Simulator) -> list[BatchRequest]:
    """The requests of a create body; ``ApiError`` (400) for a bad envelope."""
    if not isinstance(body, dict):
        raise invalid("", "Input should be a valid dictionary")
    for key in body:
        if key != "requests":
            raise invalid(key, "Extra inputs are not permitted")
    if "requests" not in body:
        raise invalid("requests", "Field required")
    raw = body["requests"]
    if not isinstance(raw, list):
        raise invalid("requests", "Input should be a valid list")
    if not raw:
        raise invalid("requests", "List should have at least 1 item after validation, not 0")
    if len(raw) > facts.BATCH_MAX_REQUESTS:
        raise invalid(
            "requests",
            f"List should have at most {facts.BATCH_MAX_REQUESTS} items after validation, not {len(raw)}",
        )
    seen: dict[str, int] = {}
    requests = []
    for i, item in enumerate(raw):
        request = _check_request(item, f"requests.{i}", sim)
        if request.custom_id in seen:
            raise invalid(
                f"requests.{i}.custom_id",
                f"Duplicate custom_id {request.custom_id!r}: also used by "
                f"requests.{seen[request.custom_id]}; custom_id must be unique in a batch",
            )
        seen[request.custom_id] = i
        requests.append(request)
    return requests


def _check_request(item: Any, path: str, sim: Simulator) -> BatchRequest:
    if not isinstance(item, dict):
        raise invalid(path, "Input should be a valid dictionary")
    for key in item:
        if key not in ("custom_id", "params"):
            raise invalid(f"{path}.{key}", "Extra inputs are not permitted")
    for key in ("custom_id", "params"):
        if key not in item:
            raise invalid(f"{path}.{key}", "Field required")
    custom_id, params = item["custom_id"], item["params"]
    if not isinstance(custom_id, str):
        raise invalid(f"{path}.custom_id", "Input should be a valid string")
    if not facts.CUSTOM_ID_PATTERN.fullmatch(custom_id):
        raise invalid(f"{path}.custom_id", f"String should match pattern '{facts.CUSTOM_ID_PATTERN.pattern}'")
    if not isinstance(params, dict):
        raise invalid(f"{path}.params", "Input should be a valid dictionary")
    _check_batch_model(params.get("model"), f"{path}.params.model", sim)
    return BatchRequest(custom_id, params)


def _check_batch_model(name: Any, path: str, sim: Simulator) -> None:
    """Refuse at once a known model that cannot run in batches; others are checked per request."""
    profile = sim.registry.get(name) if isinstance(name, str) else None
    if profile is not None and not profile.can("batch"):
        raise invalid(path, f"model {name!r} does not support the Message Batches API")


# --- the routes --------------------------------------------------------------------------------------


def _enter(request: Request, sim: Simulator) -> None:
    if sim.config.platform != "anthropic":
        raise not_found(
            f"{request.method} {request.url.path}: Message Batches are not available on {sim.config.platform}"
        )


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _current(sim: Simulator, batch: Batch) -> Batch:
    """The batch with everything due by now processed (off the event loop when there is work)."""
    if sim.batches.has_work(batch):
        await anyio.to_thread.run_sync(sim.batches.advance, batch)
    return batch


async def _found(request: Request, sim: Simulator) -> Batch:
    _enter(request, sim)
    batch_id = request.path_params["batch_id"]
    batch = sim.batches.get(batch_id)
    if batch is None:
        raise not_found(f"Message Batch not found: {batch_id}")
    return await _current(sim, batch)


async def _read_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > facts.BATCH_MAX_BYTES:
        raise ApiError(413, "Request exceeds the maximum allowed number of bytes.")
    try:
        if len(body) > _HEAVY_BODY_BYTES:
            return await anyio.to_thread.run_sync(orjson.loads, body)
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid("", f"Request body is not valid JSON: {exc}") from None


async def create(request: Request, sim: Simulator) -> Response:
    """POST /v1/messages/batches."""
    from batcher.simulator.app import JSON
    from batcher.simulator.messages import betas_of

    _enter(request, sim)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > facts.BATCH_MAX_BYTES:
        raise ApiError(413, "Request exceeds the maximum allowed number of bytes.")
    betas = betas_of(request)
    requests = check_create(await _read_body(request), sim)
    batch = sim.batches.create(requests, betas)
    return JSON(batch.to_json(_base_url(request)))


async def list_batches(request: Request, sim: Simulator) -> Response:
    """GET /v1/messages/batches: newest first, paged."""
    from batcher.simulator.app import JSON

    _enter(request, sim)
    limit, after, before = cursors(request, sim.batches.seq_of)
    base = _base_url(request)
    entries = []
    for batch in sim.batches.all():
        await _current(sim, batch)
        entries.append((batch.seq, batch.to_json(base)))
    return JSON(page(entries, limit, after, before))


async def retrieve(request: Request, sim: Simulator) -> Response:
    """GET /v1/messages/batches/{batch_id}: poll."""
    from batcher.simulator.app import JSON

    batch = await _found(request, sim)
    return JSON(batch.to_json(_base_url(request)))


async def cancel(request: Request, sim: Simulator) -> Response:
    """POST /v1/messages/batches/{batch_id}/cancel."""
    from batcher.simulator.app import JSON

    batch = await _found(request, sim)
    await anyio.to_thread.run_sync(sim.batches.cancel, batch)
    return JSON(batch.to_json(_base_url(request)))


async def results(request: Request, sim: Simulator) -> Response:
    """GET /v1/messages/batches/{batch_id}/results: JSON lines, once the batch has ended."""
    batch = await _found(request, sim)
    if not batch.ended:
        raise invalid(
            "",
            f"Message Batch {batch.id} has not finished processing: results are "
            "available once processing_status is `ended`",
        )
    return Response(batch.result_lines(), media_type="application/x-jsonl")


async def delete(request: Request, sim: Simulator) -> Response:
    """DELETE /v1/messages/batches/{batch_id}: only once ended."""
    from batcher.simulator.app import JSON

    batch = await _found(request, sim)
    if not batch.ended:
        raise invalid(
            "",
            f"Message Batch {batch.id} cannot be deleted while it is being "
            "processed: cancel it first, then delete it once it has ended",
        )
    sim.batches.remove(batch.id)
    return JSON({"id": batch.id, "type": "message_batch_deleted"})
