"""Message Batches as the API runs them: the store of batches and how each one moves.

How a batch moves, on the simulator's batch clock (``SimConfig.batches``, read at each create):

- The batch is processed progressively: its requests are taken in a seeded shuffled order (never
  the submission order when there are two or more), the k-th of n finishing ``duration_s * k / n``
  seconds after creation, so the batch ends ``duration_s`` after it was created. A seeded share
  ``expire_share`` of the requests (rounded) comes back ``expired`` instead of being processed.
  Each processed request goes to the store's :data:`Answer` (the simulator's one path for a
  messages body, without rate limits, faults or latency; see
  :meth:`batcher.simulator.core.Simulator.answer_batch_request`): an answer is ``succeeded``
  (billed by the answerer at the batch price); an ``ApiError`` is ``errored`` and free.
- Work is done in the background, as the API does it: while any batch is unfinished a ticker
  thread wakes every :data:`TICK_S` seconds and processes whatever the clock says is due, so a
  batch advances (and is billed in the ledger) whether or not anyone polls it. Looking at a batch
  (the routes in :mod:`batcher.simulator.batches`) also processes what is due first, so an answer
  never lags the clock by a tick. The ticker stops by itself once every batch has ended, and for
  good on :meth:`BatchStore.close`.
- ``request_counts`` follow the API's documentation: every request counts as ``processing`` until
  the whole batch ends, then the tallies appear at once.
- Cancelling (``in_progress`` only; 400 once ended) moves the batch to ``canceling`` for a tenth of
  its duration (less if it would have ended sooner), while requests already due finish; then the
  rest become ``canceled`` and the batch ends.
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
from typing import Any, Final

import orjson

from batcher import facts
from batcher.simulator.config import BatchClock
from batcher.simulator.errors import ApiError, invalid
from batcher.simulator.wire import new_id, rfc3339

_log = logging.getLogger(__name__)

#: Share of a batch's duration that cancellation takes to wind down.
_CANCEL_SHARE: Final = 0.1
#: Seconds between two looks of the background ticker at the unfinished batches.
TICK_S: Final = 0.05
_OUTCOMES: Final = ("succeeded", "errored", "canceled", "expired")

#: Answers one request's ``params`` with the create call's betas and its ``custom_id`` (which
#: seeds its best-effort cache draw) and bills it at the batch price: the ``Message`` object, or
#: ``ApiError`` for a request the API would refuse.
Answer = Callable[[dict[str, Any], frozenset[str], str], dict[str, Any]]


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

    def __init__(
        self,
        settings: Callable[[], BatchClock],
        answer: Answer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: the live batch settings (read at each create: ``/_control`` may change them)
        self.settings = settings
        self.answer = answer
        self.clock = clock
        self._batches: dict[str, Batch] = {}
        self._seqs: dict[str, int] = {}
        self._lock = threading.Lock()
        #: the background ticker while any batch is unfinished (see the module docstring)
        self._ticker: threading.Thread | None = None
        self._closed = threading.Event()

    def create(self, requests: list[BatchRequest], betas: frozenset[str]) -> Batch:
        """Start a batch of already checked requests."""
        clock = self.settings()
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
        if index in batch.expiring:
            return {"type": "expired"}
        try:
            request = batch.requests[index]
            message = self.answer(request.params, batch.betas, request.custom_id)
        except ApiError as exc:
            return errored(exc)
        if isinstance(message.get("usage"), dict):  # the tier the API reports for batch work
            message = {**message, "usage": {**message["usage"], "service_tier": "batch"}}
        return {"type": "succeeded", "message": message}

    @staticmethod
    def _cancel_rest(batch: Batch) -> None:
        for index in batch.order[batch.done :]:
            batch.requests[index].result = {"type": "canceled"}
        batch.done = len(batch.order)
        batch.ended_s = batch.cancel_done_s
