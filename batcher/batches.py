"""``[run] mode = "batch"``: the job through the Message Batches API, at the batch price.

A run, from the job state outward:

1. **Collect** (every ``batcher run``, whatever the job's mode: :func:`collect_ended`). Rows whose
   custom_id is in a live batch are ``batched`` (a state from before this rule had them
   ``inflight``: they are adopted). Every live batch is polled once; an ended one has its results
   read and recorded (the same :class:`~batcher.records.Result` as online, with ``mode = "batch"``
   and the cost at the batch price), its rows without a result line are released, and it is marked
   ``collected``. A batch the API no longer knows (404) is ``lost`` and its rows are released.
2. **Submit.** Rows that need work are prepared exactly as online (the run core's read and
   prepare stages, :mod:`batcher.core.prepare`: same sizing, same transports, same row errors)
   and grouped into batches within
   ``[run] batch_max_requests`` / ``batch_max_bytes`` (at most the API's 100,000 requests and
   256 MB). Each batch's id and custom_ids are written to the state the moment the API answers,
   before anything else; its rows are then marked ``batched``.
3. **Wait** (``[run] wait = true``, the default): poll the live batches, politely (first after
   ``poll_initial_s``, doubling to ``poll_max_s``), collecting each as it ends and resubmitting
   the rows that came back ``expired``, ``canceled`` or with a retryable error (each at most
   ``max_attempts`` times a run). ``wait = false`` submits and exits 75: the next ``batcher run``
   (a cron tick) collects; that is what a cron job wants.

A row in a live batch is sent by no one: not resubmitted, and not sent by an online run of the same
job either (that run collects what has ended, sends the other rows, and exits 75 while batches are
live). It becomes sendable again only when its batch is done with it: a result that says so
(expired, canceled, a retryable error), no result line in an ended batch, or the batch gone from the
API (:class:`Collector`). A crash between the API creating a batch and the state recording it (the
time of one HTTP answer) leaves that batch unknown: its rows are sent again. ``custom_id`` is the
row id where the API allows it, else a hash (:func:`batcher.records.custom_id_for`); the state maps
it back.

Per-request outcomes: ``succeeded`` → ``ok``; ``errored`` with a request the API refuses
(``invalid_request_error`` and other 4xx) → a final ``error`` row, as online; ``errored`` with a
retryable error, ``expired``, ``canceled`` → left for resubmission. A batch row's ``attempts`` is
how many times it went into a batch, over all runs; ``latency_s`` is empty (a batch has no
per-request latency) and ``request_id`` is the message id (or the error's request id).

Structured output (``[output]``): results are typed by :mod:`batcher.core.results` as online
(``refusal``, ``max_tokens``, ``schema_mismatch``). A ``schema_mismatch`` with re-asks left is not
final: its row is recorded ``transient`` (its cost in the job's totals and the budget's settle, its
re-ask counted in ``results.reasks``) and goes back to be resubmitted, by the wait loop or, with
``wait = false``, by the next run; the row's final result adds up every answer it was paid for, as
online (the state adds each answer's spend once: ``record(..., spend=)``). The count lives in the
state, so ``retry_invalid`` holds across runs: no row is sent more than ``1 + retry_invalid`` times
because of mismatches.

Cancelling: the first SIGINT/SIGTERM stops submitting and cancels the job's live batches (what
they already answered is collected by the next run; the rest is resubmitted then); a second one
exits at once. ``batcher batches OUT --cancel`` (:mod:`batcher.commands.batches`) cancels them from
another shell. To leave batches
running and exit, use ``wait = false``.

Prompt caching (:mod:`batcher.core.cache`): every request carries the same breakpoint (TTL 1h by
default in batch mode). In a batch, requests run in any order and at once, and a cache hit is best
effort, so the docs' advice is followed: before the first rows that carry a breakpoint, unless a
warm-up batch for the same prefix ended less than its TTL (less :data:`WARMUP_MARGIN_S`) ago, one
row goes alone in a *warm-up* batch (a real row: nothing is wasted), and the rest are submitted
only once it has ended. With ``wait = false`` the run submits the warm-up and exits 75; the next
run (a cron tick) collects it and submits the rest. The state's meta (:data:`WARMUP_KEY`) keeps the
warm-up batch's id, when it was created and the prefix's fingerprint (a changed prefix needs a new
warm-up). :func:`warmup_state` decides.

Budget (``[limits] budget_usd``): each row's worst case is held at the batch price when it joins
a batch and settled when its batch is collected; a row that does not fit stops submission (exit 5).

What the driver does (a batch submitted, lost, cancelled) it says through the run's
:class:`~batcher.core.notices.Notices`; it prints nothing.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import orjson
from anyio.abc import ObjectReceiveStream

from batcher import facts
from batcher.api import errors
from batcher.api.client import Client
from batcher.budget import BUDGET_STOP, Budget, BudgetGate
from batcher.config import JobConfig
from batcher.core import results
from batcher.core.notices import Notices, Say
from batcher.core.outcomes import Counters, Prepared, Written
from batcher.core.plan import NO_PREFIX, Planner, SharedPrefix
from batcher.core.prepare import RowPreparer, preparers_for
from batcher.core.seams import ImagePreparer, ResultSink
from batcher.core.signals import fatal_grace, watch_signals
from batcher.core.structured import StructuredOutput
from batcher.core.warmup import EXPIRY_MARGIN_S
from batcher.core.writer import Writer
from batcher.errors import SCHEMA_MISMATCH, RowFailure
from batcher.exits import EXIT_BUDGET, EXIT_FATAL, EXIT_INCOMPLETE, EXIT_OK, EXIT_ROW_ERRORS
from batcher.files import FileUploader
from batcher.models import ModelProfile
from batcher.records import ImageSent, Result, Row
from batcher.retry import RetryPolicy
from batcher.state import BATCH_DONE_STATUSES, BatchRecord, JobState, status_for

if TYPE_CHECKING:
    from batcher.manifest import Manifest
    from batcher.progress import BatchProgress

#: A batch whose results are recorded; anything else the state holds is live.
COLLECTED = "collected"
#: A batch the API no longer knows (404): its rows are sent again.
LOST = "lost"
#: The state's own list (its queries need it): these two.
DONE_STATUSES = frozenset(BATCH_DONE_STATUSES)
#: Bytes of ``{"requests":[...]}`` around the requests themselves.
_ENVELOPE_BYTES = 64
_META_PREFIX = "batch/"
#: meta: the last cache warm-up batch: ``{"batch_id", "created_at", "fingerprint", "ttl"}``
WARMUP_KEY = "cache.warmup"
#: A warm-up's entry is taken as gone this long before its TTL runs out, counted from when the
#: warm-up batch was created (its one request was processed at some time after that).
WARMUP_MARGIN_S = 10 * 60.0

T = TypeVar("T")


# --- pure decisions ------------------------------------------------------------------------------


def next_delay(delay: float, maximum: float) -> float:
    """The next poll interval: double, up to ``maximum``."""
    return min(maximum, delay * 2)


_STATUS_OF_TYPE = {kind: status for status, kind in sorted(facts.ERROR_TYPES.items(), reverse=True)}


def classify(result: dict[str, Any]) -> RowFailure | None:
    """The row failure one batch result holds, None when it succeeded: the same record a row's
    failure is online. ``retryable``: a row to resubmit (expired, canceled, or an error worth
    retrying); otherwise the error is final, as the same error would be online.
    """
    kind = result.get("type")
    if kind == "succeeded":
        return None
    if kind in ("expired", "canceled"):
        return RowFailure(str(kind), f"the batch request was {kind} before it was processed", retryable=True)
    error = ((result.get("error") or {}).get("error")) or {}
    error_type = str(error.get("type") or "api_error")
    message = str(error.get("message") or error_type)
    status = _STATUS_OF_TYPE.get(error_type, 500)
    exc = errors.from_response(status, {"type": "error", "error": error}, {})
    return RowFailure(error_type, message, retryable=exc.retryable or exc.fatal)


def warmup_state(
    warmup: dict[str, Any] | None,
    fingerprint: str,
    batch_status: str | None,
    now: float,
    ttl_s: float,
) -> str:
    """Where the cache warm-up of a batch-mode job stands, from the state's record of the last
    warm-up (:data:`WARMUP_KEY`) and its batch's status:

    - ``"cold"``: submit a warm-up first (none yet, another prefix, lost, or too long ago);
    - ``"warming"``: the warm-up batch has not ended: submit nothing until it has;
    - ``"warm"``: it ended less than its TTL (less :data:`WARMUP_MARGIN_S`) after it was created.
    """
    if not warmup or warmup.get("fingerprint") != fingerprint or batch_status in (None, LOST):
        return "cold"
    if batch_status not in (COLLECTED, "ended"):
        return "warming"
    margin = WARMUP_MARGIN_S if ttl_s > 2 * WARMUP_MARGIN_S else EXPIRY_MARGIN_S
    return "warm" if now - float(warmup.get("created_at") or 0.0) < ttl_s - margin else "cold"


def prefix_fingerprint(planner: Planner) -> str:
    """What identifies the cached prefix of a job's requests: the body every row shares (model,
    system, few-shot turns, tools, the breakpoint) without the row's own turn."""
    import hashlib

    from batcher.api.bodies import messages_body

    prefix = planner.prefix
    structured = planner.output.request if planner.output is not None else None
    body = messages_body(
        planner.profile, planner.settings, [], "", structured, examples=prefix.examples, cache=prefix.cache
    )
    body["messages"] = body["messages"][:-1]
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass
class Pending:
    """A prepared row waiting for its batch."""

    row_id: str
    custom_id: str
    params: dict[str, Any]
    size: int
    betas: list[str]
    held_usd: float
    #: what the results row needs once the answer comes back, possibly in a later run
    memo: dict[str, Any]


@dataclass
class BatchBuilder:
    """Prepared rows grouped into batches within a request count and a byte size."""

    max_requests: int
    max_bytes: int
    items: list[Pending] = field(default_factory=list)
    size: int = _ENVELOPE_BYTES

    def fits(self, item: Pending) -> bool:
        return len(self.items) < self.max_requests and self.size + item.size + 1 <= self.max_bytes

    def add(self, item: Pending) -> None:
        self.items.append(item)
        self.size += item.size + 1

    def take(self) -> list[Pending]:
        items, self.items, self.size = self.items, [], _ENVELOPE_BYTES
        return items


# --- collecting: every run, whatever the job's mode ----------------------------------------------


def live_batches(state: JobState) -> list[BatchRecord]:
    """The job's batches that may still answer: their rows are sent by no one else."""
    return [b for b in state.list_batches() if b.status not in DONE_STATUSES]


def live_holds_usd(state: JobState) -> float:
    """Budget held for the rows of live batches (by the run that submitted them): still committed."""
    return sum(float(_memo(state, b.batch_id).get("held_usd", 0.0)) for b in live_batches(state))


def left_to_batches_line(rows: int, batches: int, out: Path) -> str:
    """The one line a run says while rows wait in live batches (it then exits 75)."""
    noun = "batch" if batches == 1 else "batches"
    them = "it" if batches == 1 else "them"
    rows_are = "1 row is" if rows == 1 else f"{rows:,} rows are"
    return (
        f"batcher: {rows_are} in {batches} live {noun}, left to {them} and sent by no one else: "
        f"`batcher run` again collects {them} (see `batcher batches {out}`)"
    )


def _memo(state: JobState, batch_id: str) -> dict[str, Any]:
    """What the submitting run kept for a batch: held dollars, and each row's images and fields."""
    return state.get_meta(_META_PREFIX + batch_id, {}) or {}


async def _retrying(policy: RetryPolicy, rng: random.Random, call: Callable[[], Awaitable[T]]) -> T:
    from batcher.retry import retrying

    async for attempt in retrying(policy, rng):
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity reraises")


@dataclass
class Collector:
    """Polls a job's live batches and records what the ended ones answered.

    Every ``batcher run`` calls it first, whatever the mode (:func:`collect_ended`); batch mode
    then polls with it while it waits. A row comes out of ``batched`` only here: with its answer
    (``record``), as ``transient`` for an expired, canceled or retryable result
    (``record_transient``), or, when its batch ended without a line for it or is gone from the API,
    released as ``transient`` (``release_batched``). So a row is sendable again exactly when no
    live batch holds it.
    """

    profile: ModelProfile
    client: Client
    state: JobState
    sink: ResultSink
    #: where it says what it did (a batch gone from the API)
    say: Say
    counters: Counters
    policy: RetryPolicy
    part_rows: int
    rng: random.Random = field(default_factory=random.Random)
    #: the run's budget at the batch price: a collected batch's hold is settled against it
    budget: Budget | None = None
    #: a fatal answer while polling or reading results (401, 402, ...): nothing more is collected
    fatal: str | None = None
    collected_batches: int = 0
    #: result lines recorded by this run (answers, errors, and requests to send again)
    collected_rows: int = 0
    #: the job's [output] and its mode: answers are checked and typed (None: free text)
    output: StructuredOutput | None = None
    #: the job's request.max_tokens, for the message of a cut-off structured answer
    max_tokens: int | None = None

    def live_counts(self) -> tuple[int, int]:
        """``(batches, requests)`` still live."""
        live = live_batches(self.state)
        return len(live), sum(b.request_count for b in live)

    async def collect(self) -> None:
        """Poll every live batch once; record the results of those that have ended."""
        for batch in live_batches(self.state):
            if self.fatal is not None:
                return
            try:
                info = await _retrying(self.policy, self.rng, partial(self.client.get_batch, batch.batch_id))
            except errors.NotFoundError:
                self._lost(batch.batch_id)
                continue
            except errors.APIError as exc:
                if exc.fatal:
                    self.fatal = f"cannot poll batch {batch.batch_id}: {exc}"
                    return
                continue  # the next poll tries again
            status = str(info.get("processing_status"))
            self.state.update_batch(batch.batch_id, status=status, counts=info.get("request_counts"))
            if status == "ended":
                await self._collect_one(batch.batch_id)

    def _lost(self, batch_id: str) -> None:
        """The API no longer knows the batch: its rows are sent again (its hold is let go)."""
        released = self.state.release_batched(
            batch_id, "batch_lost", f"batch {batch_id} is gone from the API"
        )
        self.state.update_batch(batch_id, status=LOST)
        if self.budget is not None:
            self.budget.settle(float(_memo(self.state, batch_id).get("held_usd", 0.0)), 0.0)
        self.say(
            f"batcher: batch {batch_id} is gone from the API; its {released:,} unanswered rows "
            "will be sent again"
        )

    async def _collect_one(self, batch_id: str) -> None:
        try:
            lines = await _retrying(self.policy, self.rng, lambda: self.client.batch_results(batch_id))
        except errors.APIError as exc:
            if exc.fatal:
                self.fatal = f"cannot read the results of batch {batch_id}: {exc}"
            return
        memo = _memo(self.state, batch_id)
        rows = memo.get("rows", {})
        spent = 0.0
        for line in lines:
            spent += self._record_line(line, rows)
            self.collected_rows += 1
        # Rows the results did not mention: nothing holds them any more. Released before the batch
        # is marked collected, so a crash in between leaves them to the next run's collection.
        self.state.release_batched(
            batch_id, "batch_no_result", f"batch {batch_id} ended without a result for this row"
        )
        if self.budget is not None:
            self.budget.settle(float(memo.get("held_usd", 0.0)), spent)
        self.state.update_batch(batch_id, status=COLLECTED)
        self.collected_batches += 1
        with anyio.CancelScope(shield=True):  # off the event loop (issue 13); never half written
            await anyio.to_thread.run_sync(lambda: self.sink.export(max_rows=self.part_rows))

    def _record_line(self, line: dict[str, Any], memos: dict[str, Any]) -> float:
        """Record one result line; returns its cost (0 when it was recorded by an earlier run)."""
        custom_id = str(line.get("custom_id"))
        row_id = self.state.id_for_custom_id(custom_id)
        if row_id is None:
            return 0.0  # not this job's (cannot happen unless the state was replaced)
        result = line.get("result") or {}
        failure = classify(result)
        attempts = 1  # this submission; the state adds the row's earlier ones
        memo = memos.get(custom_id, {})
        if (
            failure is not None
            and not failure.retryable
            and failure.error_type == "not_found_error"
            and self._forget_gone_files(memo, failure.message)
        ):
            # A file id the API no longer knows (expired, deleted): the next submit pass uploads
            # the image again, as online mode does within the request.
            failure = RowFailure("file_gone", failure.message, retryable=True)
        if failure is not None and failure.retryable:
            self.state.record_transient(row_id, failure.error_type, failure.message, attempts)
            return 0.0
        out = self._result(row_id, result, failure, attempts, memo)
        earlier = self.state.get_result(row_id)
        if earlier is not None and out.request_id and earlier.request_id == out.request_id:
            # Collected before a crash: recording it again would count its cost twice.
            self.state.unbatch(row_id, status_for(earlier, final=True))
            return 0.0
        paid = out
        if earlier is not None and self._reasked(row_id, earlier):
            # The row shows every answer it was paid for, as online; the state adds only this one.
            out = results.combined(earlier, out, attempts=False)
        if self._reask(row_id, out):
            # Paid, not final: the row is sent again (its cost counts in the totals and the budget).
            self.state.record(out, final=False, reasks=1, spend=paid)
            self.counters.reasks += 1
            self.counters.spend(paid)
            return paid.cost_usd or 0.0
        self.state.record(out, spend=paid)
        self.counters.add(paid)
        return paid.cost_usd or 0.0

    def _reasked(self, row_id: str, earlier: Result) -> bool:
        """The row's stored result is a mismatch this run's answer was a re-ask of."""
        return (
            self.output is not None
            and earlier.error_type == SCHEMA_MISMATCH
            and self.state.reasks_of(row_id) > 0
        )

    def _reask(self, row_id: str, out: Result) -> bool:
        """A ``schema_mismatch`` answer whose row has re-asks left (``[output] retry_invalid``,
        counted over every run in the state)."""
        return (
            self.output is not None
            and out.error_type == SCHEMA_MISMATCH
            and self.state.reasks_of(row_id) < self.output.retry_invalid
        )

    def _forget_gone_files(self, memo: dict[str, Any], message: str) -> bool:
        """Mark the uploads a 404 names as expired, so they are uploaded again; True if any."""
        from dataclasses import replace

        from batcher.files import stale_file_ids

        ids = [i["file_id"] for i in memo.get("images", []) if i.get("file_id")]
        gone = set(stale_file_ids(message, ids))
        if not gone:
            return False
        for record in self.state.list_files():
            if record.file_id in gone:
                self.state.put_file(replace(record, expires_at=0.0))
        return True

    def _result(
        self,
        row_id: str,
        result: dict[str, Any],
        failure: RowFailure | None,
        attempts: int,
        memo: dict[str, Any],
    ) -> Result:
        images = [ImageSent(**i) for i in memo.get("images", [])]
        warnings = list(memo.get("warnings", []))
        fields = dict(memo.get("fields", {}))
        if failure is not None:
            error = result.get("error") or {}
            return results.refused(
                self.profile,
                row_id=row_id,
                error_type=failure.error_type,
                message=failure.message,
                images=images,
                warnings=warnings,
                fields=fields,
                attempts=attempts,
                request_id=error.get("request_id"),
                mode="batch",
            )
        msg = result.get("message") or {}
        return results.answered(
            self.profile,
            msg,
            row_id=row_id,
            images=images,
            warnings=warnings,
            fields=fields,
            attempts=attempts,
            request_id=msg.get("id"),
            mode="batch",
            output=self.output,
            max_tokens=self.max_tokens,
        )


async def collect_ended(
    *,
    job: JobConfig,
    profile: ModelProfile,
    client: Client,
    state: JobState,
    sink: ResultSink,
    counters: Counters,
    say: Say,
    output: StructuredOutput | None = None,
) -> Collector:
    """A run's first step, whatever the job's mode: rows found in live batches become ``batched``
    (:meth:`~batcher.state.JobState.adopt_batched`), then the batches that have ended are collected.
    Returns the collector: its ``fatal``, what it collected, and :meth:`Collector.live_counts`."""
    collector = Collector(
        profile=profile,
        client=client,
        state=state,
        sink=sink,
        say=say,
        counters=counters,
        part_rows=job.run.part_rows,
        policy=RetryPolicy(max_attempts=job.run.max_attempts, max_wait_s=job.run.max_retry_wait_s),
        output=output,
        max_tokens=job.request.max_tokens,
    )
    if live_batches(state):
        state.adopt_batched()
        await collector.collect()
    return collector


# --- the run -------------------------------------------------------------------------------------


@dataclass
class BatchRun:
    """One ``batcher run`` of a batch-mode job: the batch driver. The run core reads, prepares and
    writes (:mod:`batcher.core`); this groups prepared rows into batches, submits, polls, collects.

    The runner has already collected the batches that had ended (:func:`collect_ended`, whose
    :class:`Collector` this run goes on polling with, and whose counters it counts in).
    """

    job: JobConfig
    profile: ModelProfile
    client: Client
    state: JobState
    sink: ResultSink
    #: the image pool rows are prepared in
    pool: ImagePreparer
    rows: Callable[[], Iterable[Row]]
    #: where it says what it did, and its progress display
    notices: Notices
    collector: Collector
    #: ``--retry-errors``: rows that ended in error are sent again (once a run)
    retry_errors: bool = False
    #: ``[limits] budget_usd``, at the batch price (the plan prices rows for this mode)
    budget: BudgetGate | None = None
    clock: Callable[[], float] = time.monotonic
    #: submissions of each row in this run (bounded by run.max_attempts)
    tries: Counter[str] = field(default_factory=Counter)
    submitted_batches: int = 0
    submitted_rows: int = 0
    fatal: str | None = None
    #: a batch could not be created: submit nothing more this run
    halted: bool = False
    #: submit passes made in this run
    passes: int = 0
    #: the few-shot examples and the cache breakpoint every request shares
    prefix: SharedPrefix = NO_PREFIX
    #: the cache warm-up batch this run submitted, if any
    warmup_batch: str | None = None
    #: this submit pass is a cache warm-up (one row)
    _warming: bool = False

    def __post_init__(self) -> None:
        # Holds of batches collected from now on are settled against this run's budget.
        self.collector.budget = self.budget.budget if self.budget is not None else None
        self.stopping = anyio.Event()
        self._cancel_work: anyio.CancelScope | None = None
        self.planner = Planner.for_job(self.job, self.profile, self.collector.output, self.prefix)
        self.preparer = RowPreparer.for_job(
            self.job,
            self.profile,
            self.pool,
            downloader=self.client,
            state=self.state,
            stopping=self.stopping,
            on_fatal=self.fatal_stop,
            shared_images=self.prefix.image_count,
        )

    @property
    def counters(self) -> Counters:
        return self.collector.counters

    @property
    def uploader(self) -> FileUploader | None:
        return self.preparer.uploader

    # -- stopping (what the signal watcher and the core's stages call) --

    def stop(self, reason: str) -> None:
        """Submit nothing more; downloads and image preparations in flight are cancelled."""
        if self.counters.stop_reason is None:
            self.counters.stop_reason = reason
        self.stopping.set()
        self.preparer.cancel_unsent()

    def abandon(self, reason: str) -> None:
        """Stop now, whatever is being done (a second signal)."""
        self.stop(reason)
        if self._cancel_work is not None:
            self._cancel_work.cancel()

    def fatal_stop(self, exc: BaseException) -> None:
        """An upload found that nothing the job sends can succeed: stop, with a short grace."""
        self.stop(f"fatal: {exc}")
        fatal_grace(self._cancel_work)

    # -- the whole run --

    async def run(self) -> None:
        with anyio.CancelScope() as scope:
            self._cancel_work = scope
            await self._run()

    async def _run(self) -> None:
        run = self.job.run
        if self.budget is not None:
            self.budget.budget.reserved_usd += live_holds_usd(self.state)
        delay = run.poll_initial_s
        while self.fatal is None:
            if not self.stopping.is_set():
                await self.submit()
            live = self.live()
            if not live or not run.wait:
                return
            if self.interrupted():
                await self.cancel_live()
                return
            await self._sleep(delay)
            delay = next_delay(delay, run.poll_max_s)
            await self.collect()

    def interrupted(self) -> bool:
        """Stopped by a signal (not by the budget or a batch the API refused): stop waiting."""
        return self.stopping.is_set() and not self.halted and self.counters.stop_reason != BUDGET_STOP

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking at once if the run is told to stop meanwhile."""
        if self.stopping.is_set():
            await anyio.sleep(seconds)
            return
        with anyio.move_on_after(seconds):
            await self.stopping.wait()

    def live(self) -> list[BatchRecord]:
        return live_batches(self.state)

    # -- submit --

    def warmup(self) -> str | None:
        """None: no breakpoint (nothing to warm); else :func:`warmup_state` for the run's prefix."""
        point = self.prefix.cache
        if point is None:
            return None
        record = self.state.get_meta(WARMUP_KEY)
        batch = self.state.get_batch(str(record.get("batch_id"))) if isinstance(record, dict) else None
        return warmup_state(
            record if isinstance(record, dict) else None,
            prefix_fingerprint(self.planner),
            batch.status if batch is not None else None,
            time.time(),
            float(facts.CACHE_TTL_S[point.ttl]),
        )

    async def submit(self) -> None:
        """Prepare every row that needs work into new batches. Rows in live batches are ``batched``
        (the runner adopted any that were not), so ``pending`` leaves them out. With a cache
        breakpoint and no warm cache, a warm-up batch of one row first (see the module doc)."""
        warm = self.warmup()
        if warm == "warming":
            return  # the rest follow once the warm-up batch has ended
        only = 1 if warm == "cold" else None
        limit = self.job.run.max_attempts
        # --retry-errors sends final errors again once a run, not on every pass of the wait loop
        retry_errors = self.retry_errors and not self.passes
        self.passes += 1

        def wanted() -> Iterable[Row]:
            taken = 0
            for row in self.state.pending(self.rows(), retry_errors):
                if self.tries[row.id] >= limit:
                    continue  # left for the next run, as online rows out of attempts are
                yield row
                taken += 1
                if only is not None and taken >= only:
                    return  # a cache warm-up: one row goes alone

        prep = self.preparer
        builder = BatchBuilder(
            1 if only is not None else self.job.run.batch_max_requests, self.job.run.batch_max_bytes
        )
        self._warming = only is not None
        prep_n = preparers_for(self.pool)
        # Rows that fail before any batch (bad row, bad image, upload) are recorded as online, by
        # the core's writer stage, which exports once the pass is over (off the event loop, never
        # half written).
        writer = Writer(
            self.state,
            self.sink,
            self.counters,
            self.job.run.part_rows,
            mode="batch",
            export_as_it_goes=False,
        )
        to_prepare_send, to_prepare = anyio.create_memory_object_stream[Row](prep_n)
        prepared_send, prepared = anyio.create_memory_object_stream[Prepared](prep_n)
        results_send, results = anyio.create_memory_object_stream[Written](prep_n * 2)
        async with anyio.create_task_group() as outer:
            outer.start_soon(writer.write, results)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(prep.feed, wanted(), to_prepare_send, results_send.clone(), self.counters)
                    async with to_prepare, prepared_send:
                        for _ in range(prep_n):
                            tg.start_soon(
                                prep.stage, to_prepare.clone(), prepared_send.clone(), results_send.clone()
                            )
                    tg.start_soon(self._group, prepared, builder)
            finally:
                results_send.close()

    async def _group(self, prepared: ObjectReceiveStream[Prepared], builder: BatchBuilder) -> None:
        async with prepared:
            async for item in prepared:
                if self.halted or self.stopping.is_set():
                    continue  # not recorded: the next run prepares it again
                pending = self._pending(item)
                if pending is None:
                    continue
                if builder.items and not builder.fits(pending):
                    await self._flush(builder.take())
                builder.add(pending)
                if len(builder.items) >= builder.max_requests:
                    await self._flush(builder.take())
            if builder.items and not self.halted:
                await self._flush(builder.take())

    def _pending(self, p: Prepared) -> Pending | None:
        """A prepared row as a batch request, its worst case held; None if the budget is spent."""
        plan = self.planner.plan(p)
        held = 0.0
        if self.budget is not None:
            got = self.budget.hold(plan)
            if got is None:
                self.stop(BUDGET_STOP)
                return None
            held = got
        params = plan.body
        request = {"custom_id": p.row.custom_id, "params": params}
        memo = {
            "images": [_sent_dict(s) for s in p.sent],
            "warnings": list(p.warnings),
            "fields": dict(p.row.fields),
            "held_usd": held,
        }
        return Pending(
            p.row.id,
            p.row.custom_id,
            params,
            len(orjson.dumps(request)),
            plan.betas,
            held,
            memo,
        )

    async def _flush(self, items: list[Pending]) -> None:
        """Create one batch and record it before anything else; shielded, so a signal cannot
        leave a batch the API made but the state does not know."""
        if not items:
            return
        requests = [{"custom_id": i.custom_id, "params": i.params} for i in items]
        betas = sorted({b for i in items for b in i.betas})
        with anyio.CancelScope(shield=True):
            try:
                info = await self._retrying(lambda: self.client.create_batch(requests, betas))
            except errors.APIError as exc:
                self._release(items)
                self._give_up(f"cannot create a batch of {len(items)} requests: {exc}", exc)
                return
            batch_id = str(info["id"])
            self.state.put_batch(
                batch_id,
                [i.custom_id for i in items],
                status=str(info.get("processing_status", "in_progress")),
                counts=info.get("request_counts") or {},
            )
        self.state.set_meta(
            _META_PREFIX + batch_id,
            {"held_usd": sum(i.held_usd for i in items), "rows": {i.custom_id: i.memo for i in items}},
        )
        self.state.mark_batched(i.row_id for i in items)
        for item in items:
            self.tries[item.row_id] += 1
        self.submitted_batches += 1
        self.submitted_rows += len(items)
        if self._warming:
            self._warming = False
            self.warmup_batch = batch_id
            self.state.set_meta(
                WARMUP_KEY,
                {
                    "batch_id": batch_id,
                    "created_at": time.time(),
                    "fingerprint": prefix_fingerprint(self.planner),
                    "ttl": self.prefix.cache.ttl if self.prefix.cache is not None else None,
                },
            )
            self.notices.say(
                f"batcher: cache warm-up: batch {batch_id} ({len(items):,} request) first; the rest "
                "follow once it has ended"
            )
            return
        self.notices.say(f"batcher: submitted batch {batch_id} ({len(items):,} requests)")

    def _release(self, items: list[Pending]) -> None:
        if self.budget is not None:
            for item in items:
                self.budget.budget.settle(item.held_usd, 0.0)

    def _give_up(self, message: str, exc: errors.APIError | None = None) -> None:
        self.notices.say(f"batcher: {message}")
        self.halted = True
        if exc is not None and exc.fatal:
            self.fatal = message
        self.stop(message)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        return await _retrying(self.collector.policy, self.collector.rng, call)

    # -- collect (the Collector's work; a fatal answer there stops the run) --

    async def collect(self) -> None:
        """Poll every live batch once; record the results of those that have ended."""
        await self.collector.collect()
        if self.collector.fatal is not None and self.fatal is None:
            self._give_up(self.collector.fatal)
            self.fatal = self.collector.fatal

    def progress(self) -> BatchProgress:
        """What the progress display shows in batch mode (no request rate: batches have none)."""
        from batcher.progress import BatchProgress

        n_live, live_rows = self.collector.live_counts()
        return BatchProgress(
            submitted_rows=self.submitted_rows,
            submitted_batches=self.submitted_batches,
            collected_rows=self.collector.collected_rows,
            collected_batches=self.collector.collected_batches,
            live_batches=n_live,
            live_rows=live_rows,
        )

    # -- cancel --

    async def cancel_live(self) -> int:
        """Ask the API to cancel every live batch; returns how many it accepted."""
        return await cancel_batches(self.client, self.state, self.notices.say)


async def cancel_batches(client: Client, state: JobState, say: Say) -> int:
    """Cancel a job's live batches (what they answered already is collected by the next run)."""
    cancelled = 0
    for batch in state.list_batches():
        if batch.status in DONE_STATUSES or batch.status in ("ended", "canceling"):
            continue
        try:
            info = await client.cancel_batch(batch.batch_id)
        except errors.APIError as exc:
            say(f"batcher: cannot cancel batch {batch.batch_id}: {exc}")
            continue
        state.update_batch(batch.batch_id, status=str(info.get("processing_status", "canceling")))
        cancelled += 1
        say(f"batcher: cancelled batch {batch.batch_id}")
    return cancelled


def _sent_dict(sent: ImageSent) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(sent)


# --- wiring for the runner ------------------------------------------------------------------------


async def run_batch_mode(
    *,
    job: JobConfig,
    profile: ModelProfile,
    client: Client,
    state: JobState,
    sink: ResultSink,
    manifest: Manifest,
    retry_errors: bool,
    notices: Notices,
    to_do: int,
    budget: BudgetGate | None,
    collector: Collector,
    prefix: SharedPrefix = NO_PREFIX,
) -> tuple[int, Counters, BatchProgress]:
    """Run a batch-mode job inside ``batcher run``, after :func:`collect_ended` made ``collector``;
    returns ``(exit code, counters, what the batches did)``.

    Exit codes as online: 0 all ok; 3 some rows ended in error; 5 the budget stopped submission;
    1 fatal; 75 batches still running (``wait = false`` or interrupted) or rows left to resubmit.
    """
    from batcher.images.pool import ImagePool

    async with ImagePool(workers=job.run.image_workers or None) as pool:
        batch_run = BatchRun(
            job=job,
            profile=profile,
            client=client,
            state=state,
            sink=sink,
            pool=pool,
            rows=manifest.rows,
            notices=notices,
            collector=collector,
            retry_errors=retry_errors,
            budget=budget,
            prefix=prefix,
        )
        counters = batch_run.counters
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals, batch_run)
            tg.start_soon(lambda: notices.watch(counters, to_do, batch=batch_run.progress))
            await batch_run.run()
            tg.cancel_scope.cancel()
    # In a thread: with [run] results_uri an export also uploads (batcher.stores).
    await anyio.to_thread.run_sync(lambda: sink.export(max_rows=job.run.part_rows))
    code = exit_code(batch_run, state)
    if batch_run.uploader is not None and batch_run.fatal is None:
        from batcher.files import finish_run

        # Files stay while any batch may still refer to them, or rows are left to send.
        await finish_run(
            batch_run.uploader,
            counters,
            notices.say,
            delete_at_end=job.images.delete_files_at_end and code in (EXIT_OK, EXIT_ROW_ERRORS),
        )
    return code, counters, batch_run.progress()


def exit_code(batch_run: BatchRun, state: JobState) -> int:
    if batch_run.fatal is not None:
        return EXIT_FATAL
    if batch_run.counters.stop_reason == BUDGET_STOP:
        return EXIT_BUDGET
    if batch_run.live() or state.count_remaining(False):
        return EXIT_INCOMPLETE
    return EXIT_ROW_ERRORS if state.summary().by_status.get("error") else EXIT_OK
