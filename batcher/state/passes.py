"""Runs over the manifest (``passes``): the timeline every other store reads.

A *complete* sync tags every row it reads with its pass; the current pass is the last complete one,
and rows last seen before it are *removed*. A run's wall time is its pass's start to its finish
(or, for a run that died, to its last write, which every outcome touches).
"""

from __future__ import annotations

import sqlite3
import time

from batcher.state.connection import Database


class Passes:
    """The ``passes`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db
        #: The pass this connection began, if any: closing the state ends it (and no other, so
        #: ``batcher status`` beside a run leaves the run's pass open).
        self.own: int | None = None

    def begin(self) -> int:
        """Start a run over the manifest; its id tags the rows it sees."""
        now = time.time()
        with self._db.tx() as c:
            cur = c.execute("INSERT INTO passes(started_at, last_write_at) VALUES (?, ?)", (now, now))
        assert cur.lastrowid is not None
        self.own = cur.lastrowid
        return cur.lastrowid

    def end(self, pass_id: int) -> None:
        now = time.time()
        with self._db.tx() as c:
            c.execute(
                "UPDATE passes SET finished_at = ?, last_write_at = ? WHERE pass_id = ?", (now, now, pass_id)
            )

    def current(self) -> int | None:
        """The latest pass that synced the manifest, or None before the first."""
        value = self._db.query("SELECT max(pass_id) FROM passes WHERE rows IS NOT NULL")[0][0]
        assert value is None or isinstance(value, int)
        return value

    def touch(self, c: sqlite3.Connection) -> None:
        """Inside a write transaction: the latest run wrote now."""
        c.execute(
            "UPDATE passes SET last_write_at = ? WHERE pass_id = (SELECT max(pass_id) FROM passes)",
            (time.time(),),
        )
