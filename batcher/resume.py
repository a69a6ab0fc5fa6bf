"""How ``batcher run`` gets from the manifest to its first request fast, at any size (issue 13).

The job state must know every row of the manifest (ids, duplicates, removed rows) before a row is
judged, but at 10 million rows a full sync takes minutes. So:

- **Unchanged manifest**: the last *complete* sync stored the manifest's fingerprint (path, size,
  mtime, ctime, inode, a hash of its first and last 64 KiB, the ``[input]`` settings that make ids);
  a run whose manifest has the same fingerprint skips the sync and goes straight to the resume
  pass (:meth:`JobState.pending`), which looks rows up by primary key as it streams them.
- **New or changed manifest**: the sync runs in a thread beside the pipeline
  (:class:`BackgroundSync`), and the resume pass only judges rows the sync has passed
  (:class:`~batcher.state.SyncGate`). The run waits for the sync for up to :data:`GRACE_S` (a
  manifest of up to some 100,000 rows is fully synced by then, so duplicate ids stop it before
  anything is sent, as before); after that it sends rows from the synced prefix.
- **Duplicate ids found after rows were sent** (a big manifest): the run stops at once (nothing
  new is sent, requests in flight are awaited and kept), exit 2, naming the ids. A repeated id is
  never sent at its later occurrence; its first occurrence may have been answered.

Every row's content hash is computed with :func:`answer_settings` folded in (see
:class:`~batcher.state.ContentHasher`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from batcher.records import Row
from batcher.state import BACKGROUND_CHUNK, SCHEMA_VERSION, ContentHasher, JobState, SyncGate

if TYPE_CHECKING:
    from batcher.config import JobConfig
    from batcher.manifest import Manifest

#: Seconds a run waits for a sync to complete before it starts sending from the synced prefix.
GRACE_S = 2.0
_EDGE_BYTES = 64 * 1024
#: The GIL switch interval while a sync runs in its thread (CPython's default is 5 ms).
SYNC_SWITCH_INTERVAL_S = 0.0005


def answer_settings(job: JobConfig) -> bytes:
    """The job settings that shape an answer, as bytes folded into every row's content hash.

    All of ``[request]`` (model, system, max_tokens, sampling, effort, stop sequences) and the
    ``[images]`` options that decide what is sent for an image (size caps, bytes cap, truncated
    images). Not the transport, concurrency or anything about how a row travels: those do not
    change what the model is asked.
    """
    images = job.images
    settings = {
        "request": job.request.model_dump(mode="json"),
        "images": {"max_edge": images.max_edge, "max_image_tokens": images.max_image_tokens,
                   "max_b64_bytes": images.max_b64_bytes, "allow_truncated": images.allow_truncated},
    }
    return json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()


def manifest_fingerprint(job: JobConfig, path: Path) -> str:
    """What must be unchanged for a run to skip the sync: the file and the settings that make ids."""
    st = os.stat(path)
    edges = hashlib.sha256()
    with open(path, "rb") as fh:
        edges.update(fh.read(_EDGE_BYTES))
        if st.st_size > _EDGE_BYTES:
            fh.seek(max(_EDGE_BYTES, st.st_size - _EDGE_BYTES))
            edges.update(fh.read(_EDGE_BYTES))
    inp = job.input
    return json.dumps({
        "schema": SCHEMA_VERSION, "path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns, "inode": st.st_ino, "edges": edges.hexdigest(),
        "input": [inp.id_column, inp.image_column, inp.prompt_column, inp.prompt],
    }, sort_keys=True)


class BackgroundSync:
    """The manifest synced into the state by a thread, on the state's own (locked) connection."""

    def __init__(self, state: JobState, rows: Callable[[], Iterable[Row]], pass_id: int,
                 hasher: ContentHasher, fingerprint: str, *, chunk: int = BACKGROUND_CHUNK) -> None:
        self.state = state
        self._chunk = chunk
        self.gate = SyncGate()
        self._rows = rows
        self._pass_id = pass_id
        self._hasher = hasher
        self._fingerprint = fingerprint
        self._thread = threading.Thread(target=self._run, name="batcher-sync", daemon=True)
        self._started = time.monotonic()

    def start(self) -> BackgroundSync:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        # Lowest CPU priority for this thread (Linux schedules threads on their own): the sync is
        # far ahead of the sending anyway, and must not slow the requests' event loop.
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        # While it runs, the event loop gets the GIL back sooner after each of its waits (a
        # CPU-bound thread otherwise holds it for the whole 5 ms switch interval each time).
        interval = sys.getswitchinterval()
        sys.setswitchinterval(SYNC_SWITCH_INTERVAL_S)
        try:
            report = self.state.sync_rows(self._rows(), self._pass_id, hasher=self._hasher,
                                          gate=self.gate, fingerprint=self._fingerprint,
                                          chunk=self._chunk)
        except BaseException as exc:  # handed to the run through the gate, never lost
            self.gate.fail(exc)
        else:
            self.gate.finish(report)
        finally:
            sys.setswitchinterval(interval)

    async def first_rows(self, grace_s: float | None = None) -> None:
        """Wait until the sync completes, or has synced its first chunk and ``grace_s`` (default
        :data:`GRACE_S`) passed since it started; raises what the sync raised (duplicate ids, an
        id collision, an unreadable manifest)."""
        grace_s = GRACE_S if grace_s is None else grace_s
        gate = self.gate
        while not gate.settled and (gate.synced < 0 or time.monotonic() - self._started < grace_s):
            await anyio.sleep(0.01)
        if gate.error is not None:
            raise gate.error

    async def settled(self) -> None:
        while not self.gate.settled:
            await anyio.sleep(0.05)
        if self.gate.error is not None:
            raise self.gate.error

    def stop(self) -> None:
        """Stop after the current chunk (if still running) and wait for the thread."""
        self.gate.cancel()
        self._thread.join()


def begin(state: JobState, job: JobConfig, manifest: Manifest, redo_changed: bool) -> BackgroundSync | None:
    """Set this run's resume options on ``state``, begin its pass, and start a sync unless the
    manifest is unchanged since the last complete one (then None)."""
    settings = answer_settings(job)
    state.answer_settings = settings
    state.redo_changed = redo_changed
    pass_id = state.begin_pass()
    fingerprint = manifest_fingerprint(job, manifest.path)
    if state.synced_fingerprint() == fingerprint:
        state.sync_gate = None
        return None
    sync = BackgroundSync(state, manifest.rows, pass_id, ContentHasher(settings), fingerprint,
                          chunk=BACKGROUND_CHUNK)
    state.sync_gate = sync.gate
    return sync.start()


async def rows_from_thread(batches: Iterator[list[Row]], stop: Callable[[BaseException], None],
                           fatal: tuple[type[BaseException], ...]) -> AsyncIterator[Row]:
    """The rows of ``batches`` (:meth:`JobState.pending_batches`), each batch read and judged in a
    worker thread: reading the manifest, hashing rows and waiting for the sync never stall the
    event loop (and the requests in flight on it). Instead of raising one of ``fatal`` (a problem
    with the manifest found after rows were sent) it calls ``stop`` and ends: the run stops
    cleanly, keeping what is in flight."""
    while True:
        try:
            batch = await anyio.to_thread.run_sync(next, batches, None)
        except fatal as exc:
            stop(exc)
            return
        if batch is None:
            return
        for row in batch:
            yield row


def count_to_do(out_dir: Path, retry_errors: bool, redo_changed: bool) -> int:
    """Rows left to do, on a connection of its own (a scan of the state at millions of rows, which
    must not hold the run's connection meanwhile)."""
    with JobState.open(out_dir) as state:
        return state.count_remaining(retry_errors, redo_changed)
