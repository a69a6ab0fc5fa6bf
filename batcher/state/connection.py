"""The one SQLite connection every store of the job state shares: open, pragmas, schema, migrations,
transactions, and the key-value ``meta`` table.

Durability contract. The database is in WAL mode with ``synchronous=NORMAL`` and every public write
commits before it returns (there is no write buffer, so there is nothing to flush). In WAL mode a
commit is written to the WAL file before ``commit()`` returns, so once a write returns, the row
survives the process dying at any moment (``kill -9``, OOM, a crash). What ``NORMAL`` gives up
compared with ``FULL`` is an fsync per commit: after an operating-system crash or power loss the most
recent commits may roll back (the database stays consistent), and those rows are simply sent again.
A row's answer is small next to the request that produced it, and an fsync per row would cap a fast
job at the disk's fsync rate, so NORMAL is the default; ``synchronous="FULL"`` buys power-loss
durability.

Threads: one connection guarded by one re-entrant mutex, so calls may come from worker threads too;
a store's transaction may call another store's (nested transactions join the outer one).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal, TypeVar

from batcher.state.errors import StateError

#: 2: rows.hash and results.answered_hash (issue 13: edits to answered rows); a v1 state migrates.
#: 3: results.reasks (issue 15: the re-asks a structured-output row had, over every run).
#: 4: results.cache_saved_usd, cache_reads, cache_uses (issue 16: the prompt cache's figures).
SCHEMA_VERSION = 4
STATE_FILE = "state.sqlite"
#: Rows per executemany/IN-list chunk: bounded memory, well under SQLite's 32766 variables.
CHUNK = 2000
#: meta: set by the v1 -> v2 migration; the next complete sync takes the rows' hashes as answered.
HASH_BASELINE_KEY = "sync.hash_baseline"

#: What a column of SQLite can hand back.
SQLValue = int | float | str | bytes | None
#: Parameters of a statement: positional or named.
Params = Sequence[object] | Mapping[str, object]
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE passes(
  pass_id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, last_write_at REAL NOT NULL,
  finished_at REAL, rows INTEGER, new_rows INTEGER, duplicates INTEGER);
CREATE TABLE rows(
  id TEXT PRIMARY KEY, custom_id TEXT NOT NULL UNIQUE, manifest_index INTEGER NOT NULL,
  first_seen_pass INTEGER NOT NULL, last_seen_pass INTEGER NOT NULL, seen_in_pass INTEGER NOT NULL,
  hash INTEGER);
CREATE INDEX rows_by_pass ON rows(last_seen_pass, manifest_index);
CREATE INDEX rows_dups ON rows(last_seen_pass) WHERE seen_in_pass > 1;
CREATE TABLE results(
  id TEXT PRIMARY KEY,
  status TEXT NOT NULL CHECK (status IN ('done', 'error', 'transient', 'inflight', 'batched')),
  error_type TEXT, error_message TEXT, attempts INTEGER NOT NULL DEFAULT 0,
  input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
  cache_read_tokens INTEGER NOT NULL DEFAULT 0, cache_write_tokens INTEGER NOT NULL DEFAULT 0,
  cost_usd REAL NOT NULL DEFAULT 0, latency_s REAL NOT NULL DEFAULT 0,
  result_json TEXT, updated_at REAL NOT NULL,
  version INTEGER NOT NULL DEFAULT 0, part_id INTEGER, answered_hash INTEGER,
  reasks INTEGER NOT NULL DEFAULT 0, cache_saved_usd REAL NOT NULL DEFAULT 0,
  cache_reads INTEGER NOT NULL DEFAULT 0, cache_uses INTEGER NOT NULL DEFAULT 0);
CREATE INDEX results_by_part ON results(part_id);
CREATE TABLE parts(
  part_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, rows INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'final')), dirty INTEGER NOT NULL DEFAULT 0,
  created_at REAL NOT NULL);
CREATE TABLE files(
  sha256 TEXT PRIMARY KEY, file_id TEXT NOT NULL, bytes INTEGER NOT NULL, uploaded_at REAL NOT NULL,
  expires_at REAL);
CREATE TABLE batches(
  batch_id TEXT PRIMARY KEY, created_at REAL NOT NULL, status TEXT NOT NULL,
  request_count INTEGER NOT NULL, counts TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL);
CREATE TABLE batch_items(batch_id TEXT NOT NULL, custom_id TEXT NOT NULL,
  PRIMARY KEY (batch_id, custom_id)) WITHOUT ROWID;
"""

#: v1 -> v2: the content hashes (NULL until a sync computes them) and the index that finds the
#: duplicates of a pass without a scan. Answers recorded by v1 have no hash: the next complete
#: sync takes the manifest as it then is for what they were answered with (HASH_BASELINE_KEY).
_MIGRATE_1_TO_2 = f"""
ALTER TABLE rows ADD COLUMN hash INTEGER;
ALTER TABLE results ADD COLUMN answered_hash INTEGER;
CREATE INDEX rows_dups ON rows(last_seen_pass) WHERE seen_in_pass > 1;
INSERT OR REPLACE INTO meta(key, value) VALUES ('{HASH_BASELINE_KEY}', 'true');
"""

#: v2 -> v3: how many times each row was asked again because its JSON did not fit the job's
#: [output] schema (0 for every row answered before).
_MIGRATE_2_TO_3 = """
ALTER TABLE results ADD COLUMN reasks INTEGER NOT NULL DEFAULT 0;
"""

#: v3 -> v4: what the prompt cache saved on each row's answers (cost with cached tokens as plain
#: input, less the cost: batcher.cost.cache_saving), and how many of its answers read the cached
#: prefix (cache_reads) out of those that read or wrote it (cache_uses); 0 for earlier answers.
_MIGRATE_3_TO_4 = """
ALTER TABLE results ADD COLUMN cache_saved_usd REAL NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN cache_reads INTEGER NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN cache_uses INTEGER NOT NULL DEFAULT 0;
"""


def chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """``items`` in lists of at most ``size``: bounded memory over millions of rows."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class Database:
    """``OUT/state.sqlite`` over one connection and one mutex; open with :meth:`open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        #: Re-entrant: a store's write may call another's inside one transaction.
        self.mutex = threading.RLock()
        self._tx_depth = 0

    @classmethod
    def open(
        cls,
        out_dir: Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout_s: float = 30.0,
    ) -> Database:
        """Open (creating and migrating if needed) ``OUT/state.sqlite``; raises :class:`StateError`."""
        path = out_dir / STATE_FILE
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
            )
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            db = cls(path, conn)
            db._migrate()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: cannot open the job state: {exc}") from exc
        return db

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version == 1:
            self._apply(_MIGRATE_1_TO_2 + ";" + _MIGRATE_2_TO_3 + ";" + _MIGRATE_3_TO_4)
            return
        if version == 2:
            self._apply(_MIGRATE_2_TO_3 + ";" + _MIGRATE_3_TO_4)
            return
        if version == 3:
            self._apply(_MIGRATE_3_TO_4)
            return
        if version != 0:
            raise StateError(
                f"{self.path} has state schema version {version}; this "
                f"batcher reads versions 1 to {SCHEMA_VERSION}"
            )
        self._apply(_SCHEMA)

    def _apply(self, script: str) -> None:
        with self.tx():
            for statement in script.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self.mutex:
            self.conn.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (nested uses join the outer one)."""
        with self.mutex:
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield self.conn
                finally:
                    self._tx_depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._tx_depth = 1
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")
            finally:
                self._tx_depth = 0

    def query(self, sql: str, params: Params = ()) -> list[tuple[SQLValue, ...]]:
        with self.mutex:
            rows: list[tuple[SQLValue, ...]] = self.conn.execute(sql, params).fetchall()
            return rows

    def count(self, sql: str, params: Params = ()) -> int:
        """The one integer a ``SELECT count(*)``-like query returns."""
        value = self.query(sql, params)[0][0]
        assert isinstance(value, int), value
        return value

    # -- meta: small JSON values any store may keep --

    # Any, as json.loads has it: each key's shape is known only to the caller that wrote it.
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(str(row[0][0])) if row else default

    def set_meta(self, key: str, value: object) -> None:
        """Store a JSON-able value under ``key`` (replacing any)."""
        with self.tx() as c:
            c.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                "value = excluded.value",
                (key, json.dumps(value)),
            )

    def delete_meta(self, key: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM meta WHERE key = ?", (key,))
