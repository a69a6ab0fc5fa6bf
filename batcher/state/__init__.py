"""Job state: one SQLite database under ``OUT/``, the source of truth for what is done.

``OUT/state.sqlite`` holds which manifest rows exist (``rows``), what became of each (``results``,
the full :class:`~batcher.records.Result` as JSON), which Parquet parts hold which results
(``parts``, driven by :mod:`batcher.sink`), uploaded files (``files``), Message Batches
(``batches``/``batch_items``), runs (``passes``) and key-value ``meta``.

The package is split by owner, every store over the one connection of :mod:`.connection`:

- :mod:`.decisions`: the pure rules (:func:`needs_work`, :func:`is_changed`, :func:`status_for`,
  :class:`ContentHasher`), and the SQL built from them;
- :mod:`.connection`: open, WAL and pragmas, schema and migrations, transactions, ``meta``; the
  durability contract;
- :mod:`.lock`: the single-runner lock (:func:`acquire_lock`, :func:`lock_holder`);
- :mod:`.passes`: runs over the manifest; :mod:`.sync`: the :class:`SyncGate` a sync running beside
  the pipeline shares with the resume pass (see :mod:`batcher.resume`);
- :mod:`.rows`: the manifest sync, what is left to do, the resume pass, recorded outcomes;
- :mod:`.parts`: the Parquet parts' bookkeeping; :mod:`.files`: Files API uploads;
  :mod:`.batches`: Message Batches and the rows they hold; :mod:`.summary`: ``batcher status``;
- :mod:`.job`: :class:`JobState`, which opens them as one (``state.rows``, ``state.parquet``,
  ``state.files``, ``state.batches``, ``state.passes``) and keeps one delegating method for each
  call the stages make.

Manifest passes. A *complete* sync (:meth:`JobState.sync_rows`) tags every row it reads with its
pass; :meth:`JobState.current_pass` is the last complete one, and rows last seen before it are
*removed* (no longer in the manifest: not counted, not exported; the sink moves their answers to
``OUT/removed``). Rows carry a content hash and results the hash they were answered for, so an
answered row whose content changed is found and resent only when asked (``redo_changed``).
"""

from batcher.state.batches import BATCH_DONE_STATUSES, BatchRecord, BatchStore
from batcher.state.connection import CHUNK, HASH_BASELINE_KEY, SCHEMA_VERSION, STATE_FILE, Database
from batcher.state.decisions import (
    STATUSES,
    ContentHasher,
    Status,
    is_changed,
    needs_work,
    status_for,
    work_predicate,
)
from batcher.state.errors import AlreadyRunning, DuplicateIds, StateError
from batcher.state.files import FileRecord, FileStore
from batcher.state.job import JobState
from batcher.state.lock import LOCK_FILE, RunLock, acquire_lock, lock_holder
from batcher.state.parts import PartRecord, PartStore
from batcher.state.passes import Passes
from batcher.state.rows import BACKGROUND_CHUNK, MAX_NAMED_DUPLICATES, SYNC_FINGERPRINT_KEY, RowStore
from batcher.state.summary import Summary
from batcher.state.sync import SyncGate, SyncProgress, SyncReport

#: The names of the single-module state, kept for callers that reached for them.
_work_predicate = work_predicate

__all__ = [
    "BACKGROUND_CHUNK",
    "BATCH_DONE_STATUSES",
    "CHUNK",
    "HASH_BASELINE_KEY",
    "LOCK_FILE",
    "MAX_NAMED_DUPLICATES",
    "SCHEMA_VERSION",
    "STATE_FILE",
    "STATUSES",
    "SYNC_FINGERPRINT_KEY",
    "AlreadyRunning",
    "BatchRecord",
    "BatchStore",
    "ContentHasher",
    "Database",
    "DuplicateIds",
    "FileRecord",
    "FileStore",
    "JobState",
    "PartRecord",
    "PartStore",
    "Passes",
    "RowStore",
    "RunLock",
    "StateError",
    "Status",
    "Summary",
    "SyncGate",
    "SyncProgress",
    "SyncReport",
    "acquire_lock",
    "is_changed",
    "lock_holder",
    "needs_work",
    "status_for",
    "work_predicate",
]
