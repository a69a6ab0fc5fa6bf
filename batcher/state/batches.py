"""Message Batches (``batches``, ``batch_items``): what was submitted, and the rows a batch holds.

A row inside a live batch is ``batched`` (see :mod:`batcher.state.rows`): nobody sends it until the
batch is collected (its answers recorded) or lost (its rows released to be sent again).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from batcher.state.connection import CHUNK, Database, SQLValue, chunks
from batcher.state.decisions import Status
from batcher.state.errors import StateError
from batcher.state.passes import Passes

#: Batch statuses of a batch that holds no row any more (``batcher.batches`` names them); any other
#: status is a live batch, whose rows nobody sends.
BATCH_DONE_STATUSES = ("collected", "lost")

_COLUMNS = "batch_id, created_at, status, request_count, counts, updated_at"


@dataclass(slots=True)
class BatchRecord:
    batch_id: str
    created_at: float
    status: str
    request_count: int
    counts: dict[str, int] = field(default_factory=dict)
    updated_at: float = 0.0


class BatchStore:
    """The ``batches`` and ``batch_items`` tables, and the ``batched`` rows they hold."""

    def __init__(self, db: Database, passes: Passes) -> None:
        self._db = db
        self._passes = passes

    def put_batch(
        self,
        batch_id: str,
        custom_ids: Iterable[str],
        *,
        status: str = "in_progress",
        created_at: float | None = None,
        counts: dict[str, int] | None = None,
    ) -> None:
        """Record a submitted batch and the custom_ids it holds, in one transaction."""
        now = time.time()
        with self._db.tx() as c:
            c.execute(
                "INSERT INTO batches(batch_id, created_at, status, request_count, counts, updated_at) "
                "VALUES (?, ?, ?, 0, ?, ?)",
                (batch_id, created_at or now, status, json.dumps(counts or {}), now),
            )
            total = 0
            for chunk in chunks(custom_ids, CHUNK):
                c.executemany(
                    "INSERT OR IGNORE INTO batch_items(batch_id, custom_id) VALUES (?, ?)",
                    [(batch_id, cid) for cid in chunk],
                )
                total += len(chunk)
            c.execute("UPDATE batches SET request_count = ? WHERE batch_id = ?", (total, batch_id))

    def update_batch(
        self, batch_id: str, *, status: str | None = None, counts: dict[str, int] | None = None
    ) -> None:
        with self._db.tx() as c:
            cur = c.execute(
                "UPDATE batches SET status = coalesce(?, status), counts = coalesce(?, counts), "
                "updated_at = ? WHERE batch_id = ?",
                (status, json.dumps(counts) if counts is not None else None, time.time(), batch_id),
            )
            if cur.rowcount == 0:
                raise StateError(f"no batch {batch_id!r} in this job's state")

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        rows = self._db.query(f"SELECT {_COLUMNS} FROM batches WHERE batch_id = ?", (batch_id,))
        return _batch(rows[0]) if rows else None

    def list_batches(self, status: str | None = None) -> list[BatchRecord]:
        sql = f"SELECT {_COLUMNS} FROM batches"
        rows = (
            self._db.query(sql + " WHERE status = ? ORDER BY created_at", (status,))
            if status
            else self._db.query(sql + " ORDER BY created_at")
        )
        return [_batch(r) for r in rows]

    def batch_custom_ids(self, batch_id: str) -> Iterator[str]:
        after = ""
        while page := self._db.query(
            "SELECT custom_id FROM batch_items WHERE batch_id = ? AND custom_id > ? "
            f"ORDER BY custom_id LIMIT {CHUNK}",
            (batch_id, after),
        ):
            ids = [str(r[0]) for r in page]
            yield from ids
            after = ids[-1]

    # -- the rows a batch holds --

    def adopt_batched(self) -> int:
        """Rows whose custom_id is in a live batch but whose status says "send me" become ``batched``.

        The API may still answer such a row, so sending it anywhere would pay for it twice. It
        happens after a crash between :meth:`put_batch` and ``mark_batched``, and in a state
        written before issue 13, where submitted rows were ``inflight``. Returns how many changed.
        """
        live = ",".join("?" * len(BATCH_DONE_STATUSES))
        with self._db.tx() as c:
            before = c.total_changes
            c.execute(
                "INSERT INTO results(id, status, updated_at) SELECT r.id, 'batched', ? FROM batches b "
                "JOIN batch_items i ON i.batch_id = b.batch_id JOIN rows r ON r.custom_id = i.custom_id "
                f"WHERE b.status NOT IN ({live}) "
                "ON CONFLICT(id) DO UPDATE SET status = 'batched', updated_at = excluded.updated_at "
                "WHERE results.status NOT IN ('done', 'batched')",
                (time.time(), *BATCH_DONE_STATUSES),
            )
            return c.total_changes - before

    def unbatch(self, row_id: str, status: Status) -> None:
        """A ``batched`` row whose answer from its batch was recorded before (a crash mid-collection,
        then :meth:`adopt_batched`) gets that answer's status back; any other status stays."""
        with self._db.tx() as c:
            c.execute(
                "UPDATE results SET status = ?, updated_at = ? WHERE id = ? AND status = 'batched'",
                (status, time.time(), row_id),
            )

    def release_batched(self, batch_id: str, error_type: str, message: str) -> int:
        """Rows of an ended (or lost) batch still ``batched`` become ``transient``: sent again.

        What the batch answered is recorded first; what is left had no result line, or the batch is
        gone. A row also in another live batch stays with it. Like an expired request, the
        submission counts as an attempt. Returns how many rows were released.
        """
        live = ",".join("?" * len(BATCH_DONE_STATUSES))
        with self._db.tx() as c:
            cur = c.execute(
                "UPDATE results SET status = 'transient', error_type = ?, error_message = ?, "
                "attempts = attempts + 1, updated_at = ? WHERE status = 'batched' AND id IN ("
                "  SELECT r.id FROM batch_items i JOIN rows r ON r.custom_id = i.custom_id"
                "  WHERE i.batch_id = ?) "
                "AND id NOT IN ("
                "  SELECT r.id FROM batches b JOIN batch_items i ON i.batch_id = b.batch_id"
                "  JOIN rows r ON r.custom_id = i.custom_id"
                f"  WHERE b.batch_id != ? AND b.status NOT IN ({live}))",
                (error_type, message, time.time(), batch_id, batch_id, *BATCH_DONE_STATUSES),
            )
            self._passes.touch(c)
        return cur.rowcount


def _batch(row: tuple[SQLValue, ...]) -> BatchRecord:
    batch_id, created_at, status, request_count, counts, updated_at = row
    assert isinstance(batch_id, str) and isinstance(status, str) and isinstance(counts, str)
    assert isinstance(created_at, int | float) and isinstance(updated_at, int | float)
    assert isinstance(request_count, int)
    return BatchRecord(
        batch_id=batch_id,
        created_at=created_at,
        status=status,
        request_count=request_count,
        counts=json.loads(counts),
        updated_at=updated_at,
    )
