"""Job state: one SQLite database under ``OUT/``, the source of truth for what is done.

``OUT/state.sqlite`` holds which manifest rows exist (``rows``), what became of each (``results``,
the full :class:`~batcher.records.Result` as JSON), which Parquet parts hold which results
(``parts``, driven by :mod:`batcher.sink`), uploaded files (``files``), Message Batches
(``batches``/``batch_items``), runs (``passes``) and key-value ``meta``.

Resume is by explicit done-markers: a row needs work unless its ``results`` status says otherwise
(:func:`needs_work`, pure). Statuses: ``done`` (answered ok), ``error`` (final error), ``transient``
(failed in a way worth retrying next run), ``inflight`` (sent online, no outcome yet: redone after a
crash), ``batched`` (inside a submitted Message Batch: not sent again; whoever collects the batch
settles it with ``record`` or, for expired/errored requests, ``record_transient``).

Manifest passes. A *complete* sync (:meth:`JobState.sync_rows`) tags every row it reads with its
pass; :meth:`JobState.current_pass` is the last complete one, and rows last seen before it are
*removed* (no longer in the manifest: not counted, not exported; the sink moves their answers to
``OUT/removed``). Rows carry a content hash (:class:`ContentHasher`) and results the hash they were
answered for, so an answered row whose content changed is found (:func:`is_changed`) and resent
only when asked (``redo_changed``). A sync may run in a thread beside the pipeline; the
:class:`SyncGate` keeps the resume pass behind it (see :mod:`batcher.resume`).

Durability contract. The database is in WAL mode with ``synchronous=NORMAL`` and every public write
commits before it returns (there is no write buffer, so there is nothing to flush). In WAL mode a
commit is written to the WAL file before ``commit()`` returns, so once :meth:`JobState.record`
returns, the result survives the process dying at any moment (``kill -9``, OOM, a crash): nothing
passed to ``record`` is lost. What ``NORMAL`` gives up compared with ``FULL`` is an fsync per commit:
after an operating-system crash or power loss the most recent commits may roll back (the database
stays consistent), and those rows are simply sent again. A row's answer is small next to the
request that produced it, and an fsync per row would cap a fast job at the disk's fsync rate, so
NORMAL is the default; ``JobState.open(out, synchronous="FULL")`` buys power-loss durability.

Single runner: :func:`acquire_lock` takes a non-blocking ``flock`` on ``OUT/.lock`` (the kernel drops
it when the process dies, even by ``kill -9``) and raises :class:`AlreadyRunning` naming the holder's
pid. Take it *before* :meth:`JobState.open` so a second runner touches nothing. The lock is on an
open file description: a child made by ``fork`` shares it, so preprocessing pools should use the
``spawn``/``forkserver`` start method, or an orphaned worker keeps the job locked.

Threads: one connection, guarded by a lock, so calls may come from worker threads too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Protocol

from batcher.records import Result, Row, custom_id_for

#: 2: rows.hash and results.answered_hash (issue 13: edits to answered rows); a v1 state migrates.
SCHEMA_VERSION = 2
STATE_FILE = "state.sqlite"
LOCK_FILE = ".lock"
STATUSES = ("done", "error", "transient", "inflight", "batched")
Status = Literal["done", "error", "transient", "inflight", "batched"]
#: Rows per executemany/IN-list chunk: bounded memory, well under SQLite's 32766 variables.
CHUNK = 2000
MAX_NAMED_DUPLICATES = 20
#: Rows per transaction of a sync running beside the pipeline: short, so a record() waits little.
BACKGROUND_CHUNK = 500
#: meta: the manifest fingerprint of the last complete sync without duplicates (see runner).
SYNC_FINGERPRINT_KEY = "sync.fingerprint"
#: meta: set by the v1 -> v2 migration; the next complete sync takes the rows' hashes as answered.
HASH_BASELINE_KEY = "sync.hash_baseline"
_STAT_CACHE_MAX = 65536


class StateError(RuntimeError):
    """The job state cannot be used (wrong schema version, a corrupt file, an id collision)."""


class DuplicateIds(StateError):
    """The manifest holds an id more than once (a sync beside the pipeline stops at the first)."""

    def __init__(self, ids: list[str], count: int, *, complete: bool, read: int) -> None:
        names = ", ".join(ids)
        more = f" and {count - len(ids)} more" if count > len(ids) else ""
        where = "" if complete else f" (found within the first {read:,} rows; more may follow)"
        super().__init__(f"duplicate ids: {names}{more}{where}")
        self.ids = ids
        self.count = count
        self._where = (complete, read)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole: a sync in a process of its own hands this to the run (batcher.resume).
        complete, read = self._where
        return (partial(DuplicateIds, complete=complete, read=read), (self.ids, self.count))


class AlreadyRunning(StateError):
    """Another ``batcher run`` holds this job's lock."""

    def __init__(self, out_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"{out_dir} is in use by another batcher run ({holder}); wait for it to finish or stop it first"
        )
        self.pid = pid


# --- pure decisions -----------------------------------------------------------------------------


def needs_work(status: str | None, retry_errors: bool) -> bool:
    """Whether a row with this status must be (re)sent: the one resume rule.

    Never seen (None), transiently failed, or in flight when the last run died: yes. Done: never
    again. Inside a submitted batch: not while the batch holds it. A final error: only when the user
    asks with ``--retry-errors``.
    """
    if status is None or status in ("transient", "inflight"):
        return True
    if status == "error":
        return retry_errors
    if status in ("done", "batched"):
        return False
    raise ValueError(f"unknown row status {status!r}")


def is_changed(status: str | None, answered_hash: int | None, current_hash: int | None) -> bool:
    """Whether an answered row (done or final error) was answered for other content than it now has.

    Unknown hashes (a row answered before schema 2 and not yet baselined) never count as changed.
    """
    return (
        status in ("done", "error")
        and answered_hash is not None
        and current_hash is not None
        and answered_hash != current_hash
    )


class ContentHasher:
    """The content hash of what would be sent for a row: 8 bytes of BLAKE2b, as a signed int.

    It covers the rendered prompt, each image source as resolved, and for a local image file its
    size and mtime_ns (hashing image bytes would read every image on every run: far too slow at
    millions of rows; an edit that keeps both is not seen), plus ``settings``: the job's request
    settings that shape the answer (see ``resume.answer_settings``), so a changed model, system
    prompt or max_tokens changes every row's hash. Stats are cached per path for one pass.
    """

    def __init__(self, settings: bytes = b"") -> None:
        self.settings = settings
        self._base = hashlib.blake2b(settings, digest_size=8, person=b"batcher-row")
        self._stats: dict[str, bytes] = {}

    def __call__(self, row: Row) -> int:
        h = self._base.copy()
        h.update(row.prompt.encode("utf-8", "surrogatepass"))
        for source in row.images:
            h.update(b"\0")
            h.update(source.encode("utf-8", "surrogatepass"))
            h.update(self._stat(source))
        return int.from_bytes(h.digest(), "big", signed=True)

    def _stat(self, source: str) -> bytes:
        found = self._stats.get(source)
        if found is not None:
            return found
        if source[:8].lower().startswith(("http://", "https://")):
            found = b"|url"
        else:
            try:
                st = os.stat(source)
                found = b"|%d:%d" % (st.st_size, st.st_mtime_ns)
            except OSError:
                found = b"|missing"
        if len(self._stats) >= _STAT_CACHE_MAX:
            self._stats.clear()  # bounded memory over millions of distinct images
        self._stats[source] = found
        return found


def status_for(result: Result, final: bool) -> Status:
    """The state status a finished result gets."""
    if result.status == "ok":
        return "done"
    return "error" if final else "transient"


def _work_predicate(retry_errors: bool) -> tuple[str, list[str]]:
    """SQL for ``needs_work`` over a LEFT JOINed ``s.status``, built from the pure function."""
    statuses = [s for s in STATUSES if needs_work(s, retry_errors)]
    clauses = []
    if needs_work(None, retry_errors):
        clauses.append("s.status IS NULL")
    if statuses:
        clauses.append(f"s.status IN ({','.join('?' * len(statuses))})")
    return "(" + " OR ".join(clauses or ["0"]) + ")", statuses


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


# --- the lock -----------------------------------------------------------------------------------


class RunLock:
    """An exclusive ``flock`` on ``OUT/.lock``, held until :meth:`release` or process death."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_lock(out_dir: str | Path) -> RunLock:
    """Take the job's single-runner lock, or raise :class:`AlreadyRunning` at once."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise AlreadyRunning(out, pid) from None
    # The pid is only a message for whoever is refused; the flock is what excludes.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunLock(path, fd)


def lock_holder(out_dir: str | Path) -> int | None:
    """The pid of the ``batcher run`` holding this OUT's lock now, or None (no run is live).

    Read-only: on Linux ``/proc/locks`` is matched against the lock file's inode and the pid the
    holder wrote, so a run starting meanwhile is never refused. Elsewhere a shared lock is tried
    and dropped at once.
    """
    path = Path(out_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        pid = _read_pid(fd)
        held = _held_per_proc_locks(os.fstat(fd).st_ino, pid)
        if held is None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                held = True
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                held = False
        return (pid or -1) if held else None
    finally:
        os.close(fd)


def _held_per_proc_locks(inode: int, pid: int | None) -> bool | None:
    """Whether /proc/locks lists a FLOCK by ``pid`` on ``inode``; None where it cannot be read."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    if pid is None:
        return None
    for line in text.splitlines():
        fields = line.split()
        if "FLOCK" not in fields or "->" in fields:
            continue
        at = fields.index("FLOCK")
        try:
            holder, where = int(fields[at + 3]), fields[at + 4]
        except (IndexError, ValueError):
            continue
        if holder == pid and where.rsplit(":", 1)[-1] == str(inode):
            return True
    return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


# --- records returned -----------------------------------------------------------------------------


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


@dataclass(slots=True)
class FileRecord:
    sha256: str
    file_id: str
    bytes: int
    uploaded_at: float
    expires_at: float | None = None


@dataclass(slots=True)
class BatchRecord:
    batch_id: str
    created_at: float
    status: str
    request_count: int
    counts: dict[str, int] = field(default_factory=dict)
    updated_at: float = 0.0


@dataclass(slots=True)
class PartRecord:
    part_id: int
    name: str
    rows: int
    state: Literal["pending", "final"]
    #: 0 when the file holds exactly its member rows; a generation counter otherwise.
    dirty: int


@dataclass(slots=True)
class Summary:
    """Counts for ``batcher status``: rows of the current manifest, and the job's total spend."""

    rows: int
    by_status: dict[str, int]
    errors_by_type: dict[str, int]
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    cost_usd: float
    #: Wall time of all runs (an unfinished run counts up to its last write).
    time_spent_s: float
    #: Sum of per-row request latency.
    request_time_s: float
    runs: int
    exported_rows: int
    parts: int
    files: int
    file_bytes: int
    removed_rows: int
    #: warnings on the current manifest's results (e.g. small_image), by kind
    warnings: dict[str, int] = field(default_factory=dict)
    #: done/error rows whose content hash changed since they were answered (``--redo-changed``)
    changed_rows: int = 0
    #: answers of removed rows (kept apart under OUT/removed, not in OUT/results)
    removed_answers: int = 0


# --- the state ----------------------------------------------------------------------------------

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
  version INTEGER NOT NULL DEFAULT 0, part_id INTEGER, answered_hash INTEGER);
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
_MIGRATE_1_TO_2 = """
ALTER TABLE rows ADD COLUMN hash INTEGER;
ALTER TABLE results ADD COLUMN answered_hash INTEGER;
CREATE INDEX rows_dups ON rows(last_seen_pass) WHERE seen_in_pass > 1;
INSERT OR REPLACE INTO meta(key, value) VALUES ('sync.hash_baseline', 'true');
"""

# Usage accumulates over every answer a row ever had: spend is spend, even for a retried row.
_RECORD_SQL = """
INSERT INTO results(id, status, error_type, error_message, attempts, input_tokens, output_tokens,
  cache_read_tokens, cache_write_tokens, cost_usd, latency_s, result_json, updated_at, version, part_id,
  answered_hash)
VALUES (:id, :status, :error_type, :error_message, :attempts, :input_tokens, :output_tokens,
  :cache_read, :cache_write, :cost_usd, :latency_s, :result_json, :now, 1, NULL,
  (SELECT hash FROM rows WHERE id = :id))
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
  version = results.version + 1, part_id = NULL, answered_hash = excluded.answered_hash
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


#: A done/error row whose answer was for other content (SQL over ``rows r`` joined to ``results s``;
#: the same rule as :func:`is_changed`).
_CHANGED_SQL = (
    "s.status IN ('done', 'error') AND s.answered_hash IS NOT NULL AND r.hash IS NOT NULL "
    "AND s.answered_hash != r.hash"
)


def _collision_error(first: str, second: str, custom_id: str) -> StateError:
    return StateError(
        f"row ids {first!r} and {second!r} both map to the Message Batches custom_id "
        f"{custom_id!r}; rename one of them"
    )


class JobState:
    """The job's SQLite state; open with :meth:`JobState.open`, close with :meth:`close`."""

    def __init__(self, out_dir: Path, conn: sqlite3.Connection) -> None:
        self.out_dir = out_dir
        self._conn = conn
        self._mutex = threading.RLock()
        self._tx_depth = 0
        self._run_lock: RunLock | None = None
        self._own_pass: int | None = None
        # This run's resume options, the defaults of pending() (set by the runner, so that both
        # modes read the manifest with the same rules).
        #: the job's answer-shaping settings, folded into every row's content hash
        self.answer_settings = b""
        #: ``--redo-changed``: resend done/error rows whose content changed since their answer
        self.redo_changed = False
        #: a sync of the manifest running beside the pipeline, if any
        self.sync_gate: SyncGate | None = None

    # -- opening --

    @classmethod
    def open(
        cls,
        out_dir: str | Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout_s: float = 30.0,
    ) -> JobState:
        """Open (creating if needed) ``OUT/state.sqlite``; see the module docstring on durability."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / STATE_FILE
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
            )
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            state = cls(out, conn)
            state._migrate()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: cannot open the job state: {exc}") from exc
        return state

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version == 1:
            with self._tx():
                for statement in _MIGRATE_1_TO_2.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        if version != 0:
            raise StateError(
                f"{self.out_dir / STATE_FILE} has state schema version {version}; this "
                f"batcher reads versions 1 to {SCHEMA_VERSION}"
            )
        with self._tx():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def lock(self) -> RunLock:
        """Take the single-runner lock for this OUT (see :func:`acquire_lock`); released by close()."""
        if self._run_lock is None or not self._run_lock.held:
            self._run_lock = acquire_lock(self.out_dir)
        return self._run_lock

    def close(self) -> None:
        """Close the database (ending the pass this object began, if any) and release the lock."""
        with self._mutex:
            if self._own_pass is not None:
                with contextlib.suppress(sqlite3.Error):
                    self.end_pass(self._own_pass)
                self._own_pass = None
            self._conn.close()
        if self._run_lock is not None:
            self._run_lock.release()

    def __enter__(self) -> JobState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (nested uses join the outer one)."""
        with self._mutex:
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield self._conn
                finally:
                    self._tx_depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._tx_depth = 1
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._tx_depth = 0

    def _query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        with self._mutex:
            return self._conn.execute(sql, params).fetchall()

    # -- passes --

    def begin_pass(self) -> int:
        """Start a run over the manifest; its id tags the rows it sees."""
        now = time.time()
        with self._tx() as c:
            cur = c.execute("INSERT INTO passes(started_at, last_write_at) VALUES (?, ?)", (now, now))
        assert cur.lastrowid is not None
        self._own_pass = cur.lastrowid
        return cur.lastrowid

    def end_pass(self, pass_id: int) -> None:
        now = time.time()
        with self._tx() as c:
            c.execute(
                "UPDATE passes SET finished_at = ?, last_write_at = ? WHERE pass_id = ?", (now, now, pass_id)
            )

    def current_pass(self) -> int | None:
        """The latest pass that synced the manifest, or None before the first."""
        row = self._query("SELECT max(pass_id) FROM passes WHERE rows IS NOT NULL")
        return row[0][0]

    # -- rows --

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
        (``hasher``) is stored with it.

        With ``gate`` (a sync beside the pipeline): the gate learns each committed chunk, the sync
        stops at the first chunk that holds a duplicate id (raising :class:`DuplicateIds`, the pass
        left incomplete) and when the gate is cancelled. A sync that completes without duplicates
        stores ``fingerprint`` (the manifest it read), so the next run can skip it.
        """
        if pass_id is None:
            pass_id = self.begin_pass()
        hasher = hasher or ContentHasher()
        # An interrupted sync leaves no fingerprint: the next run syncs again.
        with self._tx() as c:
            c.execute("DELETE FROM meta WHERE key = ?", (SYNC_FINGERPRINT_KEY,))
        total = 0
        for part in _chunks(rows, chunk):
            if gate is not None and gate.cancelled:
                return SyncReport(pass_id, total, 0, [], 0, 0)
            params = [(r.id, custom_id_for(r.id), r.index, pass_id, pass_id, hasher(r)) for r in part]
            try:
                with self._tx() as c:
                    c.executemany(_SYNC_SQL, params)
            except sqlite3.IntegrityError as exc:
                raise self._collision(part) from exc
            total += len(part)
            if gate is not None:
                if self._query(
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
                return _collision_error(other, row.id, cid)
        marks = ",".join("?" * len(by_cid))
        for row_id, cid in self._query(
            f"SELECT id, custom_id FROM rows WHERE custom_id IN ({marks})", list(by_cid)
        ):
            if by_cid[cid] != row_id:
                return _collision_error(row_id, by_cid[cid], cid)
        return StateError("two row ids map to one Message Batches custom_id; rename one of them")

    def _duplicates(self, pass_id: int) -> tuple[list[str], int]:
        named = [
            r[0]
            for r in self._query(
                "SELECT id FROM rows WHERE seen_in_pass > 1 AND last_seen_pass = ? "
                "ORDER BY manifest_index LIMIT ?",
                (pass_id, MAX_NAMED_DUPLICATES),
            )
        ]
        count = self._query(
            "SELECT count(*) FROM rows WHERE seen_in_pass > 1 AND last_seen_pass = ?", (pass_id,)
        )[0][0]
        return named, count

    def _sync_report(self, pass_id: int, total: int, fingerprint: str | None = None) -> SyncReport:
        named, dup_count = self._duplicates(pass_id)
        new_rows = self._query(
            "SELECT count(*) FROM rows WHERE first_seen_pass = ? AND last_seen_pass = ?", (pass_id, pass_id)
        )[0][0]
        removed = self._query("SELECT count(*) FROM rows WHERE last_seen_pass < ?", (pass_id,))[0][0]
        with self._tx() as c:
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
                c.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    (SYNC_FINGERPRINT_KEY, json.dumps(fingerprint)),
                )
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
        value = self.get_meta(SYNC_FINGERPRINT_KEY)
        return value if isinstance(value, str) else None

    def remaining(self, retry_errors: bool) -> Iterator[str]:
        """Ids of the current manifest that need work, streamed in manifest order (indexed: a range
        of ``rows_by_pass`` and a primary-key probe of ``results`` per row)."""
        pass_id = self.current_pass()
        if pass_id is None:
            return
        predicate, statuses = _work_predicate(retry_errors)
        sql = (
            f"SELECT r.manifest_index, r.id FROM rows r LEFT JOIN results s ON s.id = r.id "
            f"WHERE r.last_seen_pass >= ? AND r.manifest_index > ? AND {predicate} "
            f"ORDER BY r.manifest_index LIMIT {CHUNK}"
        )
        after = -1
        # Keyset pages: no cursor stays open while the caller writes between pages.
        while page := self._query(sql, (pass_id, after, *statuses)):
            for _index, row_id in page:
                yield row_id
            after = page[-1][0]

    def count_remaining(self, retry_errors: bool, redo_changed: bool = False) -> int:
        """Rows of the current manifest that need work (with ``redo_changed``, changed ones too)."""
        pass_id = self.current_pass()
        if pass_id is None:
            return 0
        predicate, statuses = _work_predicate(retry_errors)
        if redo_changed:
            predicate = f"({predicate} OR ({_CHANGED_SQL}))"
        return self._query(
            f"SELECT count(*) FROM rows r LEFT JOIN results s ON s.id = r.id "
            f"WHERE r.last_seen_pass >= ? AND {predicate}",
            (pass_id, *statuses),
        )[0][0]

    def count_changed(self) -> int:
        """Done/error rows of the current manifest answered for other content than they now have
        (as of the last pass that read them)."""
        pass_id = self.current_pass()
        if pass_id is None:
            return 0
        return self._query(
            f"SELECT count(*) FROM rows r JOIN results s ON s.id = r.id "
            f"WHERE r.last_seen_pass >= ? AND {_CHANGED_SQL}",
            (pass_id,),
        )[0][0]

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
        for chunk in _chunks(rows, CHUNK // 2):
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
        ids = [r.id for r in chunk]
        marks = ",".join("?" * len(ids))
        known = {
            row_id: rest
            for row_id, *rest in self._query(
                f"SELECT r.id, r.manifest_index, r.hash, s.status, s.answered_hash FROM rows r "
                f"LEFT JOIN results s ON s.id = r.id WHERE r.id IN ({marks})",
                ids,
            )
        }
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
            with self._tx() as c:
                c.executemany("UPDATE rows SET hash = ? WHERE id = ?", updates)
        if unknown:
            # Rows no sync has seen: the skipped sync's fingerprint was wrong; the next run syncs.
            self._forget_fingerprint()
        return out

    def _forget_fingerprint(self) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM meta WHERE key = ?", (SYNC_FINGERPRINT_KEY,))

    # -- rows no longer in the manifest --

    def removed_results(self, after_rowid: int, limit: int) -> list[tuple[int, str]]:
        """``(rowid, result_json)`` of answers whose rows the current manifest no longer has."""
        pass_id = self.current_pass()
        if pass_id is None:
            return []
        return self._query(
            "SELECT s.rowid, s.result_json FROM results s JOIN rows r ON r.id = s.id "
            "WHERE r.last_seen_pass < ? AND s.result_json IS NOT NULL AND s.rowid > ? "
            "ORDER BY s.rowid LIMIT ?",
            (pass_id, after_rowid, limit),
        )

    def count_removed_in_parts(self) -> int:
        pass_id = self.current_pass()
        if pass_id is None:
            return 0
        return self._query(
            "SELECT count(*) FROM rows r JOIN results s ON s.id = r.id "
            "WHERE r.last_seen_pass < ? AND s.part_id IS NOT NULL",
            (pass_id,),
        )[0][0]

    def unassign_removed(self) -> int:
        """Take the answers of removed rows out of their parts (marked dirty, so the sink rewrites
        them without those rows), in ONE transaction. Returns how many rows left parts."""
        pass_id = self.current_pass()
        if pass_id is None:
            return 0
        removed = (
            "SELECT r.id FROM rows r JOIN results s ON s.id = r.id "
            "WHERE r.last_seen_pass < ? AND s.part_id IS NOT NULL"
        )
        with self._tx() as c:
            c.execute(
                f"UPDATE parts SET dirty = dirty + 1 WHERE part_id IN (SELECT part_id FROM results "
                f"WHERE id IN ({removed}))",
                (pass_id,),
            )
            cur = c.execute(f"UPDATE results SET part_id = NULL WHERE id IN ({removed})", (pass_id,))
        return cur.rowcount

    def custom_id(self, row_id: str) -> str:
        """The Message Batches custom_id of a row id (deterministic; see ``custom_id_for``)."""
        return custom_id_for(row_id)

    def id_for_custom_id(self, custom_id: str) -> str | None:
        """The row id behind a custom_id, or None for one this job never made."""
        row = self._query("SELECT id FROM rows WHERE custom_id = ?", (custom_id,))
        return row[0][0] if row else None

    # -- outcomes --

    def record(self, result: Result, *, final: bool = True) -> None:
        """Store a row's outcome durably (committed when this returns) and queue it for export.

        ``final=False`` stores an error result that the next run retries (status ``transient``) but
        still exports it, so the results show every row. Re-recording an exported row replaces it:
        the part holding the old version is marked dirty and the sink rewrites it without the row.

        ``result.attempts`` is this outcome's; like usage, attempts accumulate over every run, and
        ``result`` is updated to the row's total (what the results show).
        """
        with self._tx() as c:
            old = c.execute("SELECT part_id, attempts FROM results WHERE id = ?", (result.id,)).fetchone()
            result.attempts = (result.attempts or 0) + (old[1] if old else 0)
            params = {
                "id": result.id,
                "status": status_for(result, final),
                "error_type": result.error_type,
                "error_message": result.error_message,
                "attempts": result.attempts,
                "input_tokens": result.input_tokens or 0,
                "output_tokens": result.output_tokens or 0,
                "cache_read": result.cache_read_input_tokens or 0,
                "cache_write": result.cache_creation_input_tokens or 0,
                "cost_usd": result.cost_usd or 0.0,
                "latency_s": result.latency_s or 0.0,
                "result_json": result.to_json(),
                "now": time.time(),
            }
            c.execute(_RECORD_SQL, params)
            if old and old[0] is not None:
                c.execute("UPDATE parts SET dirty = dirty + 1 WHERE part_id = ?", (old[0],))
            self._touch_pass(c)

    def record_transient(self, row_id: str, error_type: str, message: str, attempts: int) -> None:
        """Leave a row for the next run (nothing exported); a result it already had stays exported.
        ``attempts`` (this run's) add to the row's total, as in :meth:`record`."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO results(id, status, error_type, error_message, attempts, updated_at) "
                "VALUES (?, 'transient', ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET status = 'transient', "
                "error_type = excluded.error_type, error_message = excluded.error_message, "
                "attempts = results.attempts + excluded.attempts, updated_at = excluded.updated_at",
                (row_id, error_type, message, attempts, time.time()),
            )
            self._touch_pass(c)

    def mark_inflight(self, row_ids: Iterable[str]) -> None:
        """Mark rows as sent. A row with no outcome (or a transient one) becomes ``inflight``; done
        and error rows keep their status, so a crash mid-retry leaves them as they were."""
        sql = (
            "INSERT INTO results(id, status, updated_at) VALUES (?, 'inflight', ?) "
            "ON CONFLICT(id) DO UPDATE SET status = 'inflight', updated_at = excluded.updated_at "
            "WHERE results.status = 'transient'"
        )
        now = time.time()
        for chunk in _chunks(row_ids, CHUNK):
            with self._tx() as c:
                c.executemany(sql, [(i, now) for i in chunk])

    def mark_batched(self, row_ids: Iterable[str]) -> None:
        """Mark rows as submitted in a Message Batch, so no later run sends them again meanwhile.

        Call it in the same breath as :meth:`put_batch` (issue 7: batch ids are recorded before
        anything else happens). Done rows keep their status; an error row retried in a batch
        becomes ``batched`` (its old result stays exported until the new one is recorded).
        """
        sql = (
            "INSERT INTO results(id, status, updated_at) VALUES (?, 'batched', ?) "
            "ON CONFLICT(id) DO UPDATE SET status = 'batched', updated_at = excluded.updated_at "
            "WHERE results.status != 'done'"
        )
        now = time.time()
        for chunk in _chunks(row_ids, CHUNK):
            with self._tx() as c:
                c.executemany(sql, [(i, now) for i in chunk])

    def _touch_pass(self, c: sqlite3.Connection) -> None:
        c.execute(
            "UPDATE passes SET last_write_at = ? WHERE pass_id = (SELECT max(pass_id) FROM passes)",
            (time.time(),),
        )

    def status_of(self, row_id: str) -> str | None:
        row = self._query("SELECT status FROM results WHERE id = ?", (row_id,))
        return row[0][0] if row else None

    def prior_attempts(self, row_id: str) -> int:
        """Attempts recorded for a row by earlier outcomes (0 for a new row)."""
        row = self._query("SELECT attempts FROM results WHERE id = ?", (row_id,))
        return row[0][0] if row else 0

    def get_result(self, row_id: str) -> Result | None:
        row = self._query("SELECT result_json FROM results WHERE id = ?", (row_id,))
        return Result.from_json(row[0][0]) if row and row[0][0] else None

    # -- meta --

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(row[0][0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-able value under ``key`` (replacing any)."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                "value = excluded.value",
                (key, json.dumps(value)),
            )

    # -- files (Files API uploads) --

    def put_file(self, record: FileRecord) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO files(sha256, file_id, bytes, uploaded_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (record.sha256, record.file_id, record.bytes, record.uploaded_at, record.expires_at),
            )

    def get_file(self, sha256: str) -> FileRecord | None:
        row = self._query(
            "SELECT sha256, file_id, bytes, uploaded_at, expires_at FROM files WHERE sha256 = ?", (sha256,)
        )
        return FileRecord(*row[0]) if row else None

    def delete_file(self, sha256: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM files WHERE sha256 = ?", (sha256,))

    def list_files(self) -> list[FileRecord]:
        return [
            FileRecord(*r)
            for r in self._query(
                "SELECT sha256, file_id, bytes, uploaded_at, expires_at FROM files ORDER BY uploaded_at"
            )
        ]

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
        """Record a submitted batch and the custom_ids it holds, in one transaction."""
        now = time.time()
        with self._tx() as c:
            c.execute(
                "INSERT INTO batches(batch_id, created_at, status, request_count, counts, updated_at) "
                "VALUES (?, ?, ?, 0, ?, ?)",
                (batch_id, created_at or now, status, json.dumps(counts or {}), now),
            )
            total = 0
            for chunk in _chunks(custom_ids, CHUNK):
                c.executemany(
                    "INSERT OR IGNORE INTO batch_items(batch_id, custom_id) VALUES (?, ?)",
                    [(batch_id, cid) for cid in chunk],
                )
                total += len(chunk)
            c.execute("UPDATE batches SET request_count = ? WHERE batch_id = ?", (total, batch_id))

    def update_batch(
        self, batch_id: str, *, status: str | None = None, counts: dict[str, int] | None = None
    ) -> None:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE batches SET status = coalesce(?, status), counts = coalesce(?, counts), "
                "updated_at = ? WHERE batch_id = ?",
                (status, json.dumps(counts) if counts is not None else None, time.time(), batch_id),
            )
            if cur.rowcount == 0:
                raise StateError(f"no batch {batch_id!r} in this job's state")

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        rows = self._query(
            "SELECT batch_id, created_at, status, request_count, counts, updated_at "
            "FROM batches WHERE batch_id = ?",
            (batch_id,),
        )
        return _batch(rows[0]) if rows else None

    def list_batches(self, status: str | None = None) -> list[BatchRecord]:
        sql = "SELECT batch_id, created_at, status, request_count, counts, updated_at FROM batches"
        rows = (
            self._query(sql + " WHERE status = ? ORDER BY created_at", (status,))
            if status
            else self._query(sql + " ORDER BY created_at")
        )
        return [_batch(r) for r in rows]

    def batch_custom_ids(self, batch_id: str) -> Iterator[str]:
        after = ""
        while page := self._query(
            "SELECT custom_id FROM batch_items WHERE batch_id = ? AND custom_id > ? "
            f"ORDER BY custom_id LIMIT {CHUNK}",
            (batch_id, after),
        ):
            yield from (r[0] for r in page)
            after = page[-1][0]

    def adopt_batched(self) -> int:
        """Rows whose custom_id is in a live batch but whose status says "send me" become ``batched``.

        The API may still answer such a row, so sending it anywhere would pay for it twice. It
        happens after a crash between :meth:`put_batch` and :meth:`mark_batched`, and in a state
        written before issue 13, where submitted rows were ``inflight``. Returns how many changed.
        """
        live = ",".join("?" * len(BATCH_DONE_STATUSES))
        with self._tx() as c:
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
        with self._tx() as c:
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
        with self._tx() as c:
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
            self._touch_pass(c)
        return cur.rowcount

    # -- Parquet parts (driven by batcher.sink) --

    def allocate_part(self) -> int:
        """A part number never used before (committed, so a crash cannot hand it out twice)."""
        with self._tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'next_part'").fetchone()
            number = json.loads(row[0]) if row else 1
            c.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('next_part', ?)", (json.dumps(number + 1),)
            )
        return number

    def unexported(self, after_rowid: int, limit: int) -> list[tuple[int, str, int, str]]:
        """``(rowid, id, version, result_json)`` of results not yet in any part, by rowid."""
        # Rows the current manifest no longer has are not exported (they go to OUT/removed).
        return self._query(
            "SELECT rowid, id, version, result_json FROM results WHERE part_id IS NULL "
            "AND result_json IS NOT NULL AND rowid > ? AND NOT EXISTS (SELECT 1 FROM rows r "
            "WHERE r.id = results.id AND r.last_seen_pass < ?) ORDER BY rowid LIMIT ?",
            (after_rowid, self.current_pass() or 0, limit),
        )

    def commit_part(self, part_id: int, name: str, members: Sequence[tuple[str, int]]) -> bool:
        """Record a written part and mark its rows exported, in ONE transaction.

        ``members`` are the ``(id, version)`` pairs written. A row re-recorded since it was read is
        not claimed; then the part holds a stale copy and is born dirty (returns False).
        """
        with self._tx() as c:
            c.execute(
                "INSERT INTO parts(part_id, name, rows, state, dirty, created_at) "
                "VALUES (?, ?, ?, 'pending', 0, ?)",
                (part_id, name, len(members), time.time()),
            )
            claimed = 0
            for chunk in _chunks(members, CHUNK):
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
        with self._tx() as c:
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
        with self._tx() as c:
            c.execute("UPDATE parts SET state = 'final' WHERE part_id = ?", (part_id,))

    def parts(self) -> list[PartRecord]:
        return [
            PartRecord(*r)
            for r in self._query("SELECT part_id, name, rows, state, dirty FROM parts ORDER BY part_id")
        ]

    def part_members(self, part_id: int, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the state says part ``part_id`` holds now."""
        out: set[str] = set()
        for chunk in _chunks(ids, CHUNK):
            out.update(
                r[0]
                for r in self._query(
                    f"SELECT id FROM results WHERE part_id = ? AND id IN ({','.join('?' * len(chunk))})",
                    (part_id, *chunk),
                )
            )
        return out

    def part_cleaned(self, part_id: int, dirty_seen: int, rows: int) -> bool:
        """After a rewrite: clean, unless the part was dirtied again meanwhile (then False)."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE parts SET dirty = 0, rows = ? WHERE part_id = ? AND dirty = ?",
                (rows, part_id, dirty_seen),
            )
        return cur.rowcount == 1

    def drop_part(self, part_id: int) -> int:
        """Forget a part whose file is gone: its rows become unexported again. Returns their count."""
        with self._tx() as c:
            cur = c.execute("UPDATE results SET part_id = NULL WHERE part_id = ?", (part_id,))
            c.execute("DELETE FROM parts WHERE part_id = ?", (part_id,))
        return cur.rowcount

    # -- summary --

    def summary(self) -> Summary:
        """Counts by status and error type for the current manifest; tokens, cost and time overall."""
        pass_id = self.current_pass()
        by_status: dict[str, int] = {}
        errors: dict[str, int] = {}
        warnings: dict[str, int] = {}
        rows = 0
        if pass_id is not None:
            for status, n in self._query(
                "SELECT coalesce(s.status, 'pending'), count(*) FROM rows r LEFT JOIN results s "
                "ON s.id = r.id WHERE r.last_seen_pass >= ? GROUP BY 1",
                (pass_id,),
            ):
                by_status["ok" if status == "done" else status] = n
                rows += n
            # json_valid: a result stored by an older batcher may hold NaN, which json_each refuses.
            warnings = dict(
                self._query(
                    "SELECT w.value, count(*) FROM rows r JOIN results s ON s.id = r.id, "
                    "json_each(CASE WHEN json_valid(s.result_json) THEN s.result_json END, '$.warnings') w "
                    "WHERE r.last_seen_pass >= ? AND s.result_json IS NOT NULL GROUP BY 1 ORDER BY 2 DESC",
                    (pass_id,),
                )
            )
            errors = dict(
                self._query(
                    "SELECT s.error_type, count(*) FROM rows r JOIN results s ON s.id = r.id "
                    "WHERE r.last_seen_pass >= ? AND s.status IN ('error', 'transient') "
                    "AND s.error_type IS NOT NULL GROUP BY 1 ORDER BY 2 DESC",
                    (pass_id,),
                )
            )
        tin, tout, cread, cwrite, cost, latency, exported = self._query(
            "SELECT coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), "
            "coalesce(sum(cache_read_tokens), 0), coalesce(sum(cache_write_tokens), 0), "
            "coalesce(sum(cost_usd), 0), coalesce(sum(latency_s), 0), count(part_id) FROM results"
        )[0]
        spent, runs = self._query(
            "SELECT coalesce(sum(coalesce(finished_at, last_write_at) - started_at), 0), count(*) FROM passes"
        )[0]
        parts = self._query("SELECT count(*) FROM parts")[0][0]
        files, file_bytes = self._query("SELECT count(*), coalesce(sum(bytes), 0) FROM files")[0]
        removed, removed_answers = (
            self._query(
                "SELECT count(*), count(s.result_json) FROM rows r LEFT JOIN results s ON s.id = r.id "
                "WHERE r.last_seen_pass < ?",
                (pass_id,),
            )[0]
            if pass_id is not None
            else (0, 0)
        )
        return Summary(
            rows=rows,
            by_status=by_status,
            errors_by_type=errors,
            input_tokens=tin,
            output_tokens=tout,
            cache_read_input_tokens=cread,
            cache_creation_input_tokens=cwrite,
            cost_usd=cost,
            time_spent_s=spent,
            request_time_s=latency,
            runs=runs,
            exported_rows=exported,
            parts=parts,
            files=files,
            file_bytes=file_bytes,
            removed_rows=removed,
            warnings=warnings,
            changed_rows=self.count_changed(),
            removed_answers=removed_answers,
        )


#: Batch statuses of a batch that holds no row any more (``batcher.batches`` names them); any other
#: status is a live batch, whose rows nobody sends.
BATCH_DONE_STATUSES = ("collected", "lost")


def _batch(row: tuple[Any, ...]) -> BatchRecord:
    batch_id, created_at, status, request_count, counts, updated_at = row
    return BatchRecord(
        batch_id=batch_id,
        created_at=created_at,
        status=status,
        request_count=request_count,
        counts=json.loads(counts),
        updated_at=updated_at,
    )
