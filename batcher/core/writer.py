"""The writer stage: every outcome durable in the state, counted, and exported to Parquet parts,
without the event loop ever waiting on disk. Both drivers end in it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from batcher.core.outcomes import Counters, Outcome, Recorded, Transient, Written
from batcher.core.seams import ResultSink, RunState
from batcher.records import Result

#: Outcomes recorded per trip to the writer thread: enough to amortise the hop, few enough that
#: the counters and the progress line stay current.
WRITE_BATCH = 64
#: Seconds between exports of a run that finishes rows slower than a part a while.
EXPORT_EVERY_S = 30.0


@dataclass
class Writer:
    state: RunState
    sink: ResultSink
    counters: Counters
    #: rows a part holds; a part is exported every this many rows (or :data:`EXPORT_EVERY_S`)
    part_rows: int
    on_result: Callable[[Result], None] | None = None
    #: the mode stamped on the results this stage records (bad rows, bad images)
    mode: Literal["online", "batch"] = "online"
    #: export parts while rows come (online); False: once, when the stream ends (batch submission)
    export_as_it_goes: bool = True
    _pending: int = field(default=0, init=False)

    def record_all(self, batch: list[Outcome], reasks: Mapping[str, int] | None = None) -> None:
        """In a worker thread: each outcome durable in the state, in order. ``reasks``: row id →
        the re-asks its answer took (structured output's ``retry_invalid``), which the state keeps."""
        for outcome in batch:
            if isinstance(outcome, Transient):
                self.state.record_transient(
                    outcome.row_id, outcome.error_type, outcome.message, outcome.attempts
                )
            else:
                if self.mode != "online":
                    outcome.mode = self.mode
                n = reasks.get(outcome.id, 0) if reasks else 0
                if n:
                    self.state.record(outcome, reasks=n)
                else:
                    self.state.record(outcome)

    def count(self, outcome: Outcome) -> None:
        if isinstance(outcome, Transient):
            self.counters.left_for_next_run += 1
            return
        self.counters.add(outcome)
        if self.on_result is not None:
            self.on_result(outcome)

    async def write(self, outcomes: MemoryObjectReceiveStream[Written]) -> None:
        """Record every outcome, and export parts, until the stream ends.

        Answers the online request stage recorded as they came (:class:`Recorded`) are only
        counted; the other outcomes (bad rows, bad images) are recorded here in a worker thread, a
        few at a time (the state serialises its connection; each record is durable when it
        returns). Each counts as done only once durable. Parts are written by one background export
        at a time (the sink takes a lock too) while rows go on being recorded; the last export runs
        to its end even when the run is cancelled.
        """
        every_rows = self.part_rows
        pending, last_export = 0, time.monotonic()
        export_done: anyio.Event | None = None
        async with anyio.create_task_group() as exports, outcomes:
            while batch := await next_outcomes(outcomes, WRITE_BATCH):
                # Not abandoned on cancel: a thread's records finish, so the counters agree.
                todo = [o for o in batch if not isinstance(o, Recorded)]
                if todo:
                    await anyio.to_thread.run_sync(self.record_all, todo)
                for item in batch:
                    outcome = item.outcome if isinstance(item, Recorded) else item
                    self.count(outcome)
                    if not isinstance(outcome, Transient):
                        pending += 1
                if not self.export_as_it_goes:
                    continue
                due = pending >= every_rows or time.monotonic() - last_export > EXPORT_EVERY_S
                if due and (export_done is None or export_done.is_set()):
                    export_done = anyio.Event()
                    exports.start_soon(self._export, every_rows, export_done)
                    pending, last_export = 0, time.monotonic()
        # state.record is durable on return; the last part is written even when cancelled.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(partial(self.sink.export, max_rows=every_rows))

    async def _export(self, max_rows: int, done: anyio.Event) -> None:
        try:
            with anyio.CancelScope(shield=True):  # a part is never left half written
                await anyio.to_thread.run_sync(partial(self.sink.export, max_rows=max_rows))
        finally:
            done.set()


async def next_outcomes(outcomes: MemoryObjectReceiveStream[Written], limit: int) -> list[Written]:
    """The next outcome and whatever else is already waiting (at most ``limit``); [] at the end."""
    try:
        batch = [await outcomes.receive()]
    except anyio.EndOfStream:
        return []
    while len(batch) < limit:
        try:
            batch.append(outcomes.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return batch
