"""A sync of the manifest running beside the pipeline, and what a sync reports.

The sync (:meth:`RowStore.sync_rows <batcher.state.rows.RowStore.sync_rows>`) reports each committed
chunk to a :class:`SyncProgress`; the resume pass waits on the :class:`SyncGate` so it never judges
a row the sync has not seen (see :mod:`batcher.resume`). No SQL here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class SyncReport:
    """What one pass over the manifest found."""

    pass_id: int
    rows: int
    new_rows: int
    #: Ids seen more than once in this pass, in manifest order: the first MAX_NAMED_DUPLICATES.
    duplicates: list[str]
    duplicate_count: int
    #: Rows of earlier passes that the manifest no longer has (kept, never sent again).
    removed: int


class SyncProgress(Protocol):
    """The sync's side of a gate: it reports each committed chunk and asks whether to stop."""

    @property
    def cancelled(self) -> bool: ...

    def advance(self, index: int) -> None: ...


class SyncGate:
    """How far a sync running beside the pipeline has got, shared by the two threads.

    The sync calls :meth:`advance` after each committed chunk (every manifest row up to that index
    is in ``rows``), then :meth:`finish` or :meth:`fail`; :meth:`JobState.pending` calls
    :meth:`wait_for` before it looks a chunk up, so it never judges a row the sync has not seen
    (a later occurrence of a duplicate id would otherwise look new). :meth:`cancel` asks the sync
    to stop after its current chunk.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.synced = -1
        self.report: SyncReport | None = None
        self.error: BaseException | None = None
        self.cancelled = False

    @property
    def done(self) -> bool:
        return self.report is not None

    @property
    def settled(self) -> bool:
        """Finished, failed or cancelled: the sync will write nothing more."""
        return self.report is not None or self.error is not None

    def advance(self, index: int) -> None:
        with self._cond:
            self.synced = max(self.synced, index)
            self._cond.notify_all()

    def finish(self, report: SyncReport) -> None:
        with self._cond:
            self.report = report
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            self.error = exc
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()

    def wait_for(self, index: int, timeout: float | None = None) -> bool:
        """Block until rows up to ``index`` are synced (True), or the sync was cancelled or
        ``timeout`` passed (False); raises the sync's error if it failed before ``index``."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self.error is not None
                    or self.report is not None
                    or self.synced >= index
                    or self.cancelled
                ),
                timeout,
            )
            if self.report is not None or self.synced >= index:
                return True
            if self.error is not None:
                raise self.error
            return False
