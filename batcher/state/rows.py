"""Rows and their outcomes (``rows``, ``results``): the manifest sync, the resume pass, record.

Resume is by explicit done-markers: a row needs work unless its ``results`` status says otherwise
(:func:`~batcher.state.decisions.needs_work`). Statuses: ``done`` (answered ok), ``error`` (final
error), ``transient`` (failed in a way worth retrying next run), ``inflight`` (sent online, no
outcome yet: redone after a crash), ``batched`` (inside a submitted Message Batch: not sent again;
whoever collects the batch settles it with ``record`` or, for expired/errored requests,
``record_transient``).

Rows carry a content hash (:class:`~batcher.state.decisions.ContentHasher`) and results the hash
they were answered for, so an answered row whose content changed is found and resent only when
asked (``redo_changed``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator

from batcher.records import Result, Row, custom_id_for
from batcher.state.connection import CHUNK, HASH_BASELINE_KEY, Database, chunks
from batcher.state.decisions import (
    CHANGED_SQL,
    ContentHasher,
    is_changed,
    needs_work,
    status_for,
    work_predicate,
)
from batcher.state.errors import DuplicateIds, StateError, collision_error
from batcher.state.parts import PartStore
from batcher.state.passes import Passes
from batcher.state.sync import SyncGate, SyncProgress, SyncReport

MAX_NAMED_DUPLICATES = 20
#: Rows per transaction of a sync running beside the pipeline: short, so a record() waits little.
BACKGROUND_CHUNK = 500
#: meta: the manifest fingerprint of the last complete sync without duplicates (see runner).
SYNC_FINGERPRINT_KEY = "sync.fingerprint"

# Usage accumulates over every answer a row ever had: spend is spend, even for a retried row.
_RECORD_SQL = """
INSERT INTO results(id, status, error_type, error_message, attempts, input_tokens, output_tokens,
  cache_read_tokens, cache_write_tokens, cost_usd, latency_s, result_json, updated_at, version, part_id,
  answered_hash, reasks, cache_saved_usd, cache_reads, cache_uses)
VALUES (:id, :status, :error_type, :error_message, :attempts, :input_tokens, :output_tokens,
  :cache_read, :cache_write, :cost_usd, :latency_s, :result_json, :now, 1, NULL,
  (SELECT hash FROM rows WHERE id = :id), :reasks, :cache_saved_usd, :cache_reads, :cache_uses)
ON CONFLICT(id) DO UPDATE SET
  status = excluded.status, error_type = excluded.error_type, error_message = excluded.error_message,
  attempts = excluded.attempts,
  input_tokens = results.input_tokens + excluded.input_tokens,
  output_tokens = results.output_tokens + excluded.output_tokens,
  cache_read_tokens = results.cache_read_tokens + excluded.cache_read_tokens,
  cache_write_tokens = results.cache_write_tokens + excluded.cache_write_tokens,
  cost_usd = results.cost_usd + excluded.cost_usd,
  latency_s = results.latency_s + excluded.latency_s,
  result_json = excluded.result_json, updated_at = excluded.updated_at,
  version = results.version + 1, part_id = NULL, answered_hash = excluded.answered_hash,
  reasks = results.reasks + excluded.reasks,
  cache_saved_usd = results.cache_saved_usd + excluded.cache_saved_usd,
  cache_reads = results.cache_reads + excluded.cache_reads,
  cache_uses = results.cache_uses + excluded.cache_uses
"""

_SYNC_SQL = """
INSERT INTO rows(id, custom_id, manifest_index, first_seen_pass, last_seen_pass, seen_in_pass, hash)
VALUES (?, ?, ?, ?, ?, 1, ?)
ON CONFLICT(id) DO UPDATE SET
  hash = CASE WHEN rows.last_seen_pass = excluded.last_seen_pass THEN rows.hash ELSE excluded.hash END,
  seen_in_pass = CASE WHEN rows.last_seen_pass = excluded.last_seen_pass
                      THEN rows.seen_in_pass + 1 ELSE 1 END,
  manifest_index = CASE WHEN rows.last_seen_pass = excluded.last_seen_pass
                        THEN rows.manifest_index ELSE excluded.manifest_index END,
  last_seen_pass = excluded.last_seen_pass
"""

#: What the resume pass learns of a known row: (manifest_index, hash, status, answered_hash).
_Known = tuple[int, int | None, str | None, int | None]


class RowStore:
    """The ``rows`` and ``results`` tables: what the manifest holds and what became of each row."""

    def __init__(self, db: Database, passes: Passes, parts: PartStore) -> None:
        self._db = db
        self._passes = passes
        self._parts = parts
        # This run's resume options, the defaults of pending() (set by the runner, so that both
        # modes read the manifest with the same rules).
        #: the job's answer-shaping settings, folded into every row's content hash
        self.answer_settings = b""
        #: ``--redo-changed``: resend done/error rows whose content changed since their answer
        self.redo_changed = False
        #: a sync of the manifest running beside the pipeline, if any
        self.sync_gate: SyncGate | None = None

    # -- the sync --

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
        """Stream the manifest's rows into the ``rows`` table; report new rows and duplicate ids.

        Constant memory: rows go in chunks through an upsert; duplicates are counted in SQL
        (``seen_in_pass``, through a partial index), never in a Python set. Each row's content hash
        (``hasher``) is stored with it. Without ``pass_id`` a new pass begins.

        With ``gate`` (a sync beside the pipeline): the gate learns each committed chunk, the sync
        stops at the first chunk that holds a duplicate id (raising :class:`DuplicateIds`, the pass
        left incomplete) and when the gate is cancelled. A sync that completes without duplicates
        stores ``fingerprint`` (the manifest it read), so the next run can skip it.
        """
        if pass_id is None:
            pass_id = self._passes.begin()
        hasher = hasher or ContentHasher()
        # An interrupted sync leaves no fingerprint: the next run syncs again.
        self._db.delete_meta(SYNC_FINGERPRINT_KEY)
        total = 0
        for part in chunks(rows, chunk):
            if gate is not None and gate.cancelled:
                return SyncReport(pass_id, total, 0, [], 0, 0)
            params = [(r.id, custom_id_for(r.id), r.index, pass_id, pass_id, hasher(r)) for r in part]
            try:
                with self._db.tx() as c:
                    c.executemany(_SYNC_SQL, params)
            except sqlite3.IntegrityError as exc:
                raise self._collision(part) from exc
            total += len(part)
            if gate is not None:
                if self._db.query(
                    "SELECT 1 FROM rows WHERE seen_in_pass > 1 AND last_seen_pass = ? LIMIT 1", (pass_id,)
                ):
                    named, count = self._duplicates(pass_id)
                    raise DuplicateIds(named, count, complete=False, read=total)
                gate.advance(part[-1].index)
        report = self._sync_report(pass_id, total, fingerprint)
        if gate is not None and report.duplicates:
            raise DuplicateIds(report.duplicates, report.duplicate_count, complete=True, read=total)
        return report

    def _collision(self, chunk: list[Row]) -> StateError:
        """Two different ids with one custom_id (a user id shaped like another id's hash): name both."""
        by_cid: dict[str, str] = {}
        for row in chunk:
            cid = custom_id_for(row.id)
            other = by_cid.setdefault(cid, row.id)
            if other != row.id:
                return collision_error(other, row.id, cid)
        marks = ",".join("?" * len(by_cid))
        for row_id, taken in self._db.query(
            f"SELECT id, custom_id FROM rows WHERE custom_id IN ({marks})", list(by_cid)
        ):
            assert isinstance(row_id, str) and isinstance(taken, str)
            if by_cid[taken] != row_id:
                return collision_error(row_id, by_cid[taken], taken)
        return StateError("two row ids map to one Message Batches custom_id; rename one of them")

    def _duplicates(self, pass_id: int) -> tuple[list[str], int]:
        named = [
            str(r[0])
            for r in self._db.query(
                "SELECT id FROM rows WHERE seen_in_pass > 1 AND last_seen_pass = ? "
                "ORDER BY manifest_index LIMIT ?",
                (pass_id, MAX_NAMED_DUPLICATES),
            )
        ]
        count = self._db.count(
            "SELECT count(*) FROM rows WHERE seen_in_pass > 1 AND last_seen_pass = ?", (pass_id,)
        )
        return named, count

    def _sync_report(self, pass_id: int, total: int, fingerprint: str | None = None) -> SyncReport:
        named, dup_count = self._duplicates(pass_id)
        new_rows = self._db.count(
            "SELECT count(*) FROM rows WHERE first_seen_pass = ? AND last_seen_pass = ?", (pass_id, pass_id)
        )
        removed = self._db.count("SELECT count(*) FROM rows WHERE last_seen_pass < ?", (pass_id,))
        with self._db.tx() as c:
            c.execute(
                "UPDATE passes SET rows = ?, new_rows = ?, duplicates = ?, last_write_at = ? "
                "WHERE pass_id = ?",
                (total, new_rows, dup_count, time.time(), pass_id),
            )
            if c.execute("SELECT 1 FROM meta WHERE key = ?", (HASH_BASELINE_KEY,)).fetchone():
                # Answers from before schema 2: taken as answered for what the manifest holds now.
                c.execute(
                    "UPDATE results SET answered_hash = (SELECT hash FROM rows WHERE rows.id = "
                    "results.id) WHERE answered_hash IS NULL AND status IN ('done', 'error')"
                )
                c.execute("DELETE FROM meta WHERE key = ?", (HASH_BASELINE_KEY,))
            if fingerprint is not None and not dup_count:
                self._db.set_meta(SYNC_FINGERPRINT_KEY, fingerprint)
        return SyncReport(
            pass_id=pass_id,
            rows=total,
            new_rows=new_rows,
            duplicates=named,
            duplicate_count=dup_count,
            removed=removed,
        )

    def synced_fingerprint(self) -> str | None:
        """The manifest fingerprint of the last complete sync without duplicates, if any."""
        value = self._db.get_meta(SYNC_FINGERPRINT_KEY)
        return value if isinstance(value, str) else None

    # -- what is left to do --

    def remaining(self, retry_errors: bool) -> Iterator[str]:
        """Ids of the current manifest that need work, streamed in manifest order (indexed: a range
        of ``rows_by_pass`` and a primary-key probe of ``results`` per row)."""
        pass_id = self._passes.current()
        if pass_id is None:
            return
        predicate, statuses = work_predicate(retry_errors)
        sql = (
            f"SELECT r.manifest_index, r.id FROM rows r LEFT JOIN results s ON s.id = r.id "
            f"WHERE r.last_seen_pass >= ? AND r.manifest_index > ? AND {predicate} "
            f"ORDER BY r.manifest_index LIMIT {CHUNK}"
        )
        after: int = -1
        # Keyset pages: no cursor stays open while the caller writes between pages.
        while page := self._db.query(sql, (pass_id, after, *statuses)):
            for _index, row_id in page:
                yield str(row_id)
            last = page[-1][0]
            assert isinstance(last, int)
            after = last

    def count_remaining(self, retry_errors: bool, redo_changed: bool = False) -> int:
        """Rows of the current manifest that need work (with ``redo_changed``, changed ones too)."""
        pass_id = self._passes.current()
        if pass_id is None:
            return 0
        predicate, statuses = work_predicate(retry_errors)
        if redo_changed:
            predicate = f"({predicate} OR ({CHANGED_SQL}))"
        return self._db.count(
            f"SELECT count(*) FROM rows r LEFT JOIN results s ON s.id = r.id "
            f"WHERE r.last_seen_pass >= ? AND {predicate}",
            (pass_id, *statuses),
        )

    def count_changed(self) -> int:
        """Done/error rows of the current manifest answered for other content than they now have
        (as of the last pass that read them)."""
        pass_id = self._passes.current()
        if pass_id is None:
            return 0
        return self._db.count(
            f"SELECT count(*) FROM rows r JOIN results s ON s.id = r.id "
            f"WHERE r.last_seen_pass >= ? AND {CHANGED_SQL}",
            (pass_id,),
        )

    # -- the resume pass --

    def pending(
        self,
        rows: Iterable[Row],
        retry_errors: bool,
        *,
        redo_changed: bool | None = None,
        gate: SyncGate | None = None,
    ) -> Iterator[Row]:
        """The rows of a second pass over the manifest that need work, in order.

        Lets the pipeline stream the manifest again instead of holding it: each chunk's statuses are
        looked up at once (primary-key probes). A repeated id is yielded only at its first position,
        so a duplicate is never sent twice in one run.

        Each row's content hash is computed as it is read and stored when it differs (so an answer
        records what it was answered for, and ``count_changed`` sees edits to image files the
        manifest does not show). ``redo_changed`` (default: :attr:`redo_changed`, set by the
        runner) also yields done/error rows whose hash changed since they were answered. With a
        sync running beside (``gate``, default :attr:`sync_gate`), each chunk waits until the sync
        has passed it.
        """
        for batch in self.pending_batches(rows, retry_errors, redo_changed=redo_changed, gate=gate):
            yield from batch

    def pending_batches(
        self,
        rows: Iterable[Row],
        retry_errors: bool,
        *,
        redo_changed: bool | None = None,
        gate: SyncGate | None = None,
    ) -> Iterator[list[Row]]:
        """:meth:`pending` in non-empty lists, each as soon as it is judged: for a reader in a
        thread of its own (its waits for the sync then never hold up an event loop)."""
        redo = self.redo_changed if redo_changed is None else redo_changed
        gate = gate if gate is not None else self.sync_gate
        hasher = ContentHasher(self.answer_settings)
        for chunk in chunks(rows, CHUNK // 2):
            while gate is not None and chunk and not gate.done:
                # Judge what the sync has passed, without waiting for the rest of the chunk.
                if not gate.wait_for(chunk[0].index):
                    return  # the sync was cancelled: the run is ending
                ready = sum(1 for r in chunk if r.index <= gate.synced) if not gate.done else len(chunk)
                if out := self._pending_chunk(chunk[:ready], hasher, retry_errors, redo):
                    yield out
                chunk = chunk[ready:]
            if chunk and (out := self._pending_chunk(chunk, hasher, retry_errors, redo)):
                yield out

    def _pending_chunk(
        self, chunk: list[Row], hasher: ContentHasher, retry_errors: bool, redo: bool
    ) -> list[Row]:
        known = self._known([r.id for r in chunk])
        out: list[Row] = []
        updates: list[tuple[int, str]] = []
        unknown = False
        for row in chunk:
            current = hasher(row)
            found = known.get(row.id)
            if found is None:
                unknown = True
                out.append(row)
                continue
            index, stored, status, answered = found
            if index != row.index:
                continue  # a later occurrence of a repeated id
            if stored != current:
                updates.append((current, row.id))
            if needs_work(status, retry_errors) or (redo and is_changed(status, answered, current)):
                out.append(row)
        if updates:
            # Before any row of the chunk is sent: record() stores the hash a row was answered for.
            with self._db.tx() as c:
                c.executemany("UPDATE rows SET hash = ? WHERE id = ?", updates)
        if unknown:
            # Rows no sync has seen: the skipped sync's fingerprint was wrong; the next run syncs.
            self._db.delete_meta(SYNC_FINGERPRINT_KEY)
        return out

    def _known(self, ids: list[str]) -> dict[str, _Known]:
        marks = ",".join("?" * len(ids))
        with self._db.mutex:
            found: list[tuple[str, int, int | None, str | None, int | None]] = self._db.conn.execute(
                f"SELECT r.id, r.manifest_index, r.hash, s.status, s.answered_hash FROM rows r "
                f"LEFT JOIN results s ON s.id = r.id WHERE r.id IN ({marks})",
                ids,
            ).fetchall()
        return {
            row_id: (index, stored, status, answered) for row_id, index, stored, status, answered in found
        }

    # -- custom ids --

    def custom_id(self, row_id: str) -> str:
        """The Message Batches custom_id of a row id (deterministic; see ``custom_id_for``)."""
        return custom_id_for(row_id)

    def id_for_custom_id(self, custom_id: str) -> str | None:
        """The row id behind a custom_id, or None for one this job never made."""
        row = self._db.query("SELECT id FROM rows WHERE custom_id = ?", (custom_id,))
        return str(row[0][0]) if row else None

    # -- outcomes --

    def record(
        self, result: Result, *, final: bool = True, reasks: int = 0, spend: Result | None = None
    ) -> None:
        """Store a row's outcome durably (committed when this returns) and queue it for export.

        ``final=False`` stores an error result that the next run retries (status ``transient``) but
        still exports it, so the results show every row. Re-recording an exported row replaces it:
        the part holding the old version is marked dirty and the sink rewrites it without the row.

        ``result.attempts`` is this outcome's; like usage, attempts accumulate over every run, and
        ``result`` is updated to the row's total (what the results show). ``reasks``: re-asks of
        a structured-output answer this outcome stands for (online: those its request stage made;
        batch: 1 when a mismatch is recorded ``final=False`` to be sent again); they add up in
        ``results.reasks`` (:meth:`reasks_of`), so ``retry_invalid`` holds across runs.
        """
        with self._db.tx() as c:
            old = c.execute("SELECT part_id, attempts FROM results WHERE id = ?", (result.id,)).fetchone()
            result.attempts = (result.attempts or 0) + (old[1] if old else 0)
            paid = spend if spend is not None else result
            params = {
                "id": result.id,
                "status": status_for(result, final),
                "error_type": result.error_type,
                "error_message": result.error_message,
                "attempts": result.attempts,
                "input_tokens": paid.input_tokens or 0,
                "output_tokens": paid.output_tokens or 0,
                "cache_read": paid.cache_read_input_tokens or 0,
                "cache_write": paid.cache_creation_input_tokens or 0,
                "cost_usd": paid.cost_usd or 0.0,
                "latency_s": paid.latency_s or 0.0,
                "result_json": result.to_json(),
                "now": time.time(),
                "reasks": reasks,
                "cache_saved_usd": paid.cache_saved_usd or 0.0,
                "cache_reads": 1 if paid.cache_read_input_tokens else 0,
                "cache_uses": 1 if paid.cache_read_input_tokens or paid.cache_creation_input_tokens else 0,
            }
            c.execute(_RECORD_SQL, params)
            if old and old[0] is not None:
                self._parts.mark_dirty(c, old[0])
            self._passes.touch(c)

    def record_transient(self, row_id: str, error_type: str, message: str, attempts: int) -> None:
        """Leave a row for the next run (nothing exported); a result it already had stays exported.
        ``attempts`` (this run's) add to the row's total, as in :meth:`record`."""
        with self._db.tx() as c:
            c.execute(
                "INSERT INTO results(id, status, error_type, error_message, attempts, updated_at) "
                "VALUES (?, 'transient', ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET status = 'transient', "
                "error_type = excluded.error_type, error_message = excluded.error_message, "
                "attempts = results.attempts + excluded.attempts, updated_at = excluded.updated_at",
                (row_id, error_type, message, attempts, time.time()),
            )
            self._passes.touch(c)

    def mark_inflight(self, row_ids: Iterable[str]) -> None:
        """Mark rows as sent. A row with no outcome (or a transient one) becomes ``inflight``; done
        and error rows keep their status, so a crash mid-retry leaves them as they were."""
        self._mark(
            row_ids,
            "INSERT INTO results(id, status, updated_at) VALUES (?, 'inflight', ?) "
            "ON CONFLICT(id) DO UPDATE SET status = 'inflight', updated_at = excluded.updated_at "
            "WHERE results.status = 'transient'",
        )

    def mark_batched(self, row_ids: Iterable[str]) -> None:
        """Mark rows as submitted in a Message Batch, so no later run sends them again meanwhile.

        Call it in the same breath as ``put_batch`` (issue 7: batch ids are recorded before
        anything else happens). Done rows keep their status; an error row retried in a batch
        becomes ``batched`` (its old result stays exported until the new one is recorded).
        """
        self._mark(
            row_ids,
            "INSERT INTO results(id, status, updated_at) VALUES (?, 'batched', ?) "
            "ON CONFLICT(id) DO UPDATE SET status = 'batched', updated_at = excluded.updated_at "
            "WHERE results.status != 'done'",
        )

    def _mark(self, row_ids: Iterable[str], sql: str) -> None:
        now = time.time()
        for chunk in chunks(row_ids, CHUNK):
            with self._db.tx() as c:
                c.executemany(sql, [(i, now) for i in chunk])

    def status_of(self, row_id: str) -> str | None:
        row = self._db.query("SELECT status FROM results WHERE id = ?", (row_id,))
        return str(row[0][0]) if row else None

    def prior_attempts(self, row_id: str) -> int:
        """Attempts recorded for a row by earlier outcomes (0 for a new row)."""
        row = self._db.query("SELECT attempts FROM results WHERE id = ?", (row_id,))
        return int(row[0][0] or 0) if row else 0

    def reasks_of(self, row_id: str) -> int:
        """How many times the row was asked again because its JSON did not fit the schema."""
        row = self._db.query("SELECT reasks FROM results WHERE id = ?", (row_id,))
        return int(row[0][0] or 0) if row else 0

    def get_result(self, row_id: str) -> Result | None:
        row = self._db.query("SELECT result_json FROM results WHERE id = ?", (row_id,))
        return Result.from_json(str(row[0][0])) if row and row[0][0] else None
