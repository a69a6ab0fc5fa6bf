"""The Parquet parts' bookkeeping (``parts``, and ``results.part_id``), driven by :mod:`batcher.sink`.

A result belongs to at most one part; a part is *dirty* when its file holds rows it no longer owns
(a row re-recorded, or removed from the manifest), and the sink rewrites it. Every change to which
rows a part holds is one transaction with the part's own record, so a crash leaves either both or
neither.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from batcher.state.connection import CHUNK, Database, chunks
from batcher.state.passes import Passes


@dataclass(slots=True)
class PartRecord:
    part_id: int
    name: str
    rows: int
    state: Literal["pending", "final"]
    #: 0 when the file holds exactly its member rows; a generation counter otherwise.
    dirty: int


class PartStore:
    """The ``parts`` table and which results each part holds."""

    def __init__(self, db: Database, passes: Passes) -> None:
        self._db = db
        self._passes = passes

    def allocate_part(self) -> int:
        """A part number never used before (committed, so a crash cannot hand it out twice)."""
        with self._db.tx():
            number = self._db.get_meta("next_part", 1)
            assert isinstance(number, int)
            self._db.set_meta("next_part", number + 1)
        return number

    def unexported(self, after_rowid: int, limit: int) -> list[tuple[int, str, int, str]]:
        """``(rowid, id, version, result_json)`` of results not yet in any part, by rowid."""
        # Rows the current manifest no longer has are not exported (they go to OUT/removed).
        with self._db.mutex:
            rows: list[tuple[int, str, int, str]] = self._db.conn.execute(
                "SELECT rowid, id, version, result_json FROM results WHERE part_id IS NULL "
                "AND result_json IS NOT NULL AND rowid > ? AND NOT EXISTS (SELECT 1 FROM rows r "
                "WHERE r.id = results.id AND r.last_seen_pass < ?) ORDER BY rowid LIMIT ?",
                (after_rowid, self._passes.current() or 0, limit),
            ).fetchall()
        return rows

    def commit_part(self, part_id: int, name: str, members: Sequence[tuple[str, int]]) -> bool:
        """Record a written part and mark its rows exported, in ONE transaction.

        ``members`` are the ``(id, version)`` pairs written. A row re-recorded since it was read is
        not claimed; then the part holds a stale copy and is born dirty (returns False).
        """
        with self._db.tx() as c:
            c.execute(
                "INSERT INTO parts(part_id, name, rows, state, dirty, created_at) "
                "VALUES (?, ?, ?, 'pending', 0, ?)",
                (part_id, name, len(members), time.time()),
            )
            claimed = 0
            for chunk in chunks(members, CHUNK):
                before = c.total_changes
                c.executemany(
                    "UPDATE results SET part_id = ? WHERE id = ? AND version = ? AND part_id IS NULL",
                    [(part_id, i, v) for i, v in chunk],
                )
                claimed += c.total_changes - before
            if claimed != len(members):
                c.execute("UPDATE parts SET dirty = 1 WHERE part_id = ?", (part_id,))
        return claimed == len(members)

    def merge_parts(self, part_id: int, name: str, old_parts: Sequence[int], written: int) -> bool:
        """Record a merged part: move the old parts' rows to it and forget them, in ONE transaction.

        Returns False (and the new part is born dirty) when fewer rows moved than were written:
        some were re-recorded meanwhile, so the merged file holds stale copies.
        """
        marks = ",".join("?" * len(old_parts))
        with self._db.tx() as c:
            c.execute(
                "INSERT INTO parts(part_id, name, rows, state, dirty, created_at) "
                "VALUES (?, ?, ?, 'pending', 0, ?)",
                (part_id, name, written, time.time()),
            )
            moved = c.execute(
                f"UPDATE results SET part_id = ? WHERE part_id IN ({marks})", (part_id, *old_parts)
            ).rowcount
            c.execute(f"DELETE FROM parts WHERE part_id IN ({marks})", tuple(old_parts))
            if moved != written:
                c.execute("UPDATE parts SET dirty = 1, rows = ? WHERE part_id = ?", (moved, part_id))
        return moved == written

    def finalize_part(self, part_id: int) -> None:
        with self._db.tx() as c:
            c.execute("UPDATE parts SET state = 'final' WHERE part_id = ?", (part_id,))

    def all(self) -> list[PartRecord]:
        """Every part, by number."""
        with self._db.mutex:
            rows: list[tuple[int, str, int, Literal["pending", "final"], int]] = self._db.conn.execute(
                "SELECT part_id, name, rows, state, dirty FROM parts ORDER BY part_id"
            ).fetchall()
        return [PartRecord(*r) for r in rows]

    def part_members(self, part_id: int, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the state says part ``part_id`` holds now."""
        out: set[str] = set()
        for chunk in chunks(ids, CHUNK):
            out.update(
                str(r[0])
                for r in self._db.query(
                    f"SELECT id FROM results WHERE part_id = ? AND id IN ({','.join('?' * len(chunk))})",
                    (part_id, *chunk),
                )
            )
        return out

    def mark_dirty(self, c: sqlite3.Connection, part_id: int) -> None:
        """Inside a write transaction: the part's file holds a row it no longer owns."""
        c.execute("UPDATE parts SET dirty = dirty + 1 WHERE part_id = ?", (part_id,))

    def part_cleaned(self, part_id: int, dirty_seen: int, rows: int) -> bool:
        """After a rewrite: clean, unless the part was dirtied again meanwhile (then False)."""
        with self._db.tx() as c:
            cur = c.execute(
                "UPDATE parts SET dirty = 0, rows = ? WHERE part_id = ? AND dirty = ?",
                (rows, part_id, dirty_seen),
            )
        return cur.rowcount == 1

    def drop_part(self, part_id: int) -> int:
        """Forget a part whose file is gone: its rows become unexported again. Returns their count."""
        with self._db.tx() as c:
            cur = c.execute("UPDATE results SET part_id = NULL WHERE part_id = ?", (part_id,))
            c.execute("DELETE FROM parts WHERE part_id = ?", (part_id,))
        return cur.rowcount

    # -- rows no longer in the manifest: their answers leave the parts for OUT/removed --

    def removed_results(self, after_rowid: int, limit: int) -> list[tuple[int, str]]:
        """``(rowid, result_json)`` of answers whose rows the current manifest no longer has."""
        pass_id = self._passes.current()
        if pass_id is None:
            return []
        with self._db.mutex:
            rows: list[tuple[int, str]] = self._db.conn.execute(
                "SELECT s.rowid, s.result_json FROM results s JOIN rows r ON r.id = s.id "
                "WHERE r.last_seen_pass < ? AND s.result_json IS NOT NULL AND s.rowid > ? "
                "ORDER BY s.rowid LIMIT ?",
                (pass_id, after_rowid, limit),
            ).fetchall()
        return rows

    def count_removed_in_parts(self) -> int:
        pass_id = self._passes.current()
        if pass_id is None:
            return 0
        return self._db.count(
            "SELECT count(*) FROM rows r JOIN results s ON s.id = r.id "
            "WHERE r.last_seen_pass < ? AND s.part_id IS NOT NULL",
            (pass_id,),
        )

    def unassign_removed(self) -> int:
        """Take the answers of removed rows out of their parts (marked dirty, so the sink rewrites
        them without those rows), in ONE transaction. Returns how many rows left parts."""
        pass_id = self._passes.current()
        if pass_id is None:
            return 0
        removed = (
            "SELECT r.id FROM rows r JOIN results s ON s.id = r.id "
            "WHERE r.last_seen_pass < ? AND s.part_id IS NOT NULL"
        )
        with self._db.tx() as c:
            c.execute(
                f"UPDATE parts SET dirty = dirty + 1 WHERE part_id IN (SELECT part_id FROM results "
                f"WHERE id IN ({removed}))",
                (pass_id,),
            )
            cur = c.execute(f"UPDATE results SET part_id = NULL WHERE id IN ({removed})", (pass_id,))
        return cur.rowcount
