""":class:`JobState`: the job's stores over one connection, opened and closed as one.

The stores (``state.rows``, ``state.parquet``, ``state.files``, ``state.batches``, ``state.passes``)
share one :class:`~batcher.state.connection.Database`, so a transaction of one may call another's and
every write goes through one mutex. JobState also keeps the methods the stages called before the
split (each a one-line delegation to its owner), so callers need not know which store owns what.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from batcher.records import Result, Row
from batcher.state.batches import BatchRecord, BatchStore
from batcher.state.connection import CHUNK, Database, Params, SQLValue
from batcher.state.decisions import ContentHasher, Status
from batcher.state.files import FileRecord, FileStore
from batcher.state.lock import RunLock, acquire_lock
from batcher.state.parts import PartRecord, PartStore
from batcher.state.passes import Passes
from batcher.state.rows import RowStore
from batcher.state.summary import Summary, summarize
from batcher.state.sync import SyncGate, SyncProgress, SyncReport


class JobState:
    """The job's SQLite state; open with :meth:`JobState.open`, close with :meth:`close`."""

    def __init__(self, out_dir: Path, db: Database) -> None:
        self.out_dir = out_dir
        self.db = db
        self.passes = Passes(db)
        self.parquet = PartStore(db, self.passes)
        self.rows = RowStore(db, self.passes, self.parquet)
        self.files = FileStore(db)
        self.batches = BatchStore(db, self.passes)
        self._run_lock: RunLock | None = None

    # -- opening --

    @classmethod
    def open(
        cls,
        out_dir: str | Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout_s: float = 30.0,
    ) -> JobState:
        """Open (creating if needed) ``OUT/state.sqlite``; see :mod:`batcher.state.connection` on
        durability."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return cls(out, Database.open(out, synchronous=synchronous, busy_timeout_s=busy_timeout_s))

    def lock(self) -> RunLock:
        """Take the single-runner lock for this OUT (see :func:`acquire_lock`); released by close()."""
        if self._run_lock is None or not self._run_lock.held:
            self._run_lock = acquire_lock(self.out_dir)
        return self._run_lock

    def close(self) -> None:
        """Close the database (ending the pass this object began, if any) and release the lock."""
        with self.db.mutex:
            if self.passes.own is not None:
                with contextlib.suppress(sqlite3.Error):
                    self.passes.end(self.passes.own)
                self.passes.own = None
            self.db.close()
        if self._run_lock is not None:
            self._run_lock.release()

    def __enter__(self) -> JobState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- for tests written against the single-class state --

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.db.conn

    def _query(self, sql: str, params: Params = ()) -> list[tuple[SQLValue, ...]]:
        return self.db.query(sql, params)

    # -- the run's resume options (the rows store's; set by the runner) --

    @property
    def answer_settings(self) -> bytes:
        return self.rows.answer_settings

    @answer_settings.setter
    def answer_settings(self, value: bytes) -> None:
        self.rows.answer_settings = value

    @property
    def redo_changed(self) -> bool:
        return self.rows.redo_changed

    @redo_changed.setter
    def redo_changed(self, value: bool) -> None:
        self.rows.redo_changed = value

    @property
    def sync_gate(self) -> SyncGate | None:
        return self.rows.sync_gate

    @sync_gate.setter
    def sync_gate(self, value: SyncGate | None) -> None:
        self.rows.sync_gate = value

    # -- passes --

    def begin_pass(self) -> int:
        return self.passes.begin()

    def end_pass(self, pass_id: int) -> None:
        self.passes.end(pass_id)

    def current_pass(self) -> int | None:
        return self.passes.current()

    # -- rows and outcomes --

    def sync_rows(
        self,
        rows: Iterable[Row],
        pass_id: int | None = None,
        *,
        hasher: ContentHasher | None = None,
        gate: SyncProgress | None = None,
        fingerprint: str | None = None,
        chunk: int = CHUNK,
    ) -> SyncReport:
        return self.rows.sync_rows(
            rows, pass_id, hasher=hasher, gate=gate, fingerprint=fingerprint, chunk=chunk
        )

    def synced_fingerprint(self) -> str | None:
        return self.rows.synced_fingerprint()

    def remaining(self, retry_errors: bool) -> Iterator[str]:
        return self.rows.remaining(retry_errors)

    def count_remaining(self, retry_errors: bool, redo_changed: bool = False) -> int:
        return self.rows.count_remaining(retry_errors, redo_changed)

    def count_changed(self) -> int:
        return self.rows.count_changed()

    def pending(
        self,
        rows: Iterable[Row],
        retry_errors: bool,
        *,
        redo_changed: bool | None = None,
        gate: SyncGate | None = None,
    ) -> Iterator[Row]:
        return self.rows.pending(rows, retry_errors, redo_changed=redo_changed, gate=gate)

    def pending_batches(
        self,
        rows: Iterable[Row],
        retry_errors: bool,
        *,
        redo_changed: bool | None = None,
        gate: SyncGate | None = None,
    ) -> Iterator[list[Row]]:
        return self.rows.pending_batches(rows, retry_errors, redo_changed=redo_changed, gate=gate)

    def custom_id(self, row_id: str) -> str:
        return self.rows.custom_id(row_id)

    def id_for_custom_id(self, custom_id: str) -> str | None:
        return self.rows.id_for_custom_id(custom_id)

    def record(
        self, result: Result, *, final: bool = True, reasks: int = 0, spend: Result | None = None
    ) -> None:
        self.rows.record(result, final=final, reasks=reasks, spend=spend)

    def reasks_of(self, row_id: str) -> int:
        return self.rows.reasks_of(row_id)

    def record_transient(self, row_id: str, error_type: str, message: str, attempts: int) -> None:
        self.rows.record_transient(row_id, error_type, message, attempts)

    def mark_inflight(self, row_ids: Iterable[str]) -> None:
        self.rows.mark_inflight(row_ids)

    def mark_batched(self, row_ids: Iterable[str]) -> None:
        self.rows.mark_batched(row_ids)

    def status_of(self, row_id: str) -> str | None:
        return self.rows.status_of(row_id)

    def prior_attempts(self, row_id: str) -> int:
        return self.rows.prior_attempts(row_id)

    def get_result(self, row_id: str) -> Result | None:
        return self.rows.get_result(row_id)

    # -- meta --

    # Any, as json.loads has it: each key's shape is known only to the caller that wrote it.
    def get_meta(self, key: str, default: Any = None) -> Any:
        return self.db.get_meta(key, default)

    def set_meta(self, key: str, value: object) -> None:
        self.db.set_meta(key, value)

    # -- files --

    def put_file(self, record: FileRecord) -> None:
        self.files.put_file(record)

    def get_file(self, sha256: str) -> FileRecord | None:
        return self.files.get_file(sha256)

    def delete_file(self, sha256: str) -> None:
        self.files.delete_file(sha256)

    def list_files(self) -> list[FileRecord]:
        return self.files.list_files()

    # -- Message Batches --

    def put_batch(
        self,
        batch_id: str,
        custom_ids: Iterable[str],
        *,
        status: str = "in_progress",
        created_at: float | None = None,
        counts: dict[str, int] | None = None,
    ) -> None:
        self.batches.put_batch(batch_id, custom_ids, status=status, created_at=created_at, counts=counts)

    def update_batch(
        self, batch_id: str, *, status: str | None = None, counts: dict[str, int] | None = None
    ) -> None:
        self.batches.update_batch(batch_id, status=status, counts=counts)

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        return self.batches.get_batch(batch_id)

    def list_batches(self, status: str | None = None) -> list[BatchRecord]:
        return self.batches.list_batches(status)

    def batch_custom_ids(self, batch_id: str) -> Iterator[str]:
        return self.batches.batch_custom_ids(batch_id)

    def adopt_batched(self) -> int:
        return self.batches.adopt_batched()

    def unbatch(self, row_id: str, status: Status) -> None:
        self.batches.unbatch(row_id, status)

    def release_batched(self, batch_id: str, error_type: str, message: str) -> int:
        return self.batches.release_batched(batch_id, error_type, message)

    # -- Parquet parts --

    def allocate_part(self) -> int:
        return self.parquet.allocate_part()

    def unexported(self, after_rowid: int, limit: int) -> list[tuple[int, str, int, str]]:
        return self.parquet.unexported(after_rowid, limit)

    def commit_part(self, part_id: int, name: str, members: Sequence[tuple[str, int]]) -> bool:
        return self.parquet.commit_part(part_id, name, members)

    def merge_parts(self, part_id: int, name: str, old_parts: Sequence[int], written: int) -> bool:
        return self.parquet.merge_parts(part_id, name, old_parts, written)

    def finalize_part(self, part_id: int) -> None:
        self.parquet.finalize_part(part_id)

    def parts(self) -> list[PartRecord]:
        return self.parquet.all()

    def part_members(self, part_id: int, ids: Sequence[str]) -> set[str]:
        return self.parquet.part_members(part_id, ids)

    def part_cleaned(self, part_id: int, dirty_seen: int, rows: int) -> bool:
        return self.parquet.part_cleaned(part_id, dirty_seen, rows)

    def drop_part(self, part_id: int) -> int:
        return self.parquet.drop_part(part_id)

    def removed_results(self, after_rowid: int, limit: int) -> list[tuple[int, str]]:
        return self.parquet.removed_results(after_rowid, limit)

    def count_removed_in_parts(self) -> int:
        return self.parquet.count_removed_in_parts()

    def unassign_removed(self) -> int:
        return self.parquet.unassign_removed()

    # -- summary --

    def summary(self) -> Summary:
        """Counts by status and error type for the current manifest; tokens, cost and time overall."""
        return summarize(self.db, self.passes.current(), self.rows.count_changed())
