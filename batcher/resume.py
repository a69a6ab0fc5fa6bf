"""How ``batcher run`` gets from the manifest to its first request fast, at any size (issue 13).

The job state must know every row of the manifest (ids, duplicates, removed rows) before a row is
judged, but at 10 million rows a full sync takes minutes. So:

- **Unchanged manifest**: the last *complete* sync stored the manifest's fingerprint (path, size,
  mtime, ctime, inode, a hash of its first and last 64 KiB, the ``[input]`` settings that make ids);
  a run whose manifest has the same fingerprint skips the sync and goes straight to the resume
  pass (:meth:`JobState.pending`), which looks rows up by primary key as it streams them.
- **New or changed manifest**: the sync runs in a process beside the pipeline
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
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from batcher.records import Row
from batcher.state import (
    BACKGROUND_CHUNK,
    SCHEMA_VERSION,
    ContentHasher,
    JobState,
    StateError,
    SyncGate,
    SyncProgress,
    SyncReport,
)
from batcher.stores import ObjectPath
from batcher.urls import is_remote

if TYPE_CHECKING:
    from batcher.config import ExampleConfig, JobConfig
    from batcher.manifest import Manifest

#: Seconds a run waits for a sync to complete before it starts sending from the synced prefix.
GRACE_S = 2.0
_EDGE_BYTES = 64 * 1024
#: Run the sync in a process of its own (see :class:`BackgroundSync`); False: in a thread of the
#: run's process, where it competes with the event loop for the GIL (for embedding where a process
#: cannot be spawned, and for tests that step into the sync).
SYNC_IN_PROCESS = True
#: Seconds :meth:`BackgroundSync.stop` waits for the sync process to finish its chunk.
STOP_WAIT_S = 10.0


def answer_settings(job: JobConfig) -> bytes:
    """The job settings that shape an answer, as bytes folded into every row's content hash.

    All of ``[request]`` (model, system, max_tokens, sampling, effort, stop sequences) and the
    ``[images]`` options that decide what is sent for an image (size caps, bytes cap, truncated
    images). Not the transport, concurrency or anything about how a row travels: those do not
    change what the model is asked.
    """
    images = job.images
    # system_file is only where the system prompt came from: its text is request.system (load_job
    # reads it). A job without examples dumps as it did before they existed, so its rows keep
    # their hashes.
    request = job.request.model_dump(mode="json", exclude={"system_file", "examples"})
    if job.request.examples:
        request["examples"] = [_example_settings(example) for example in job.request.examples]
    settings = {
        "request": request,
        "images": {
            "max_edge": images.max_edge,
            "max_image_tokens": images.max_image_tokens,
            "max_b64_bytes": images.max_b64_bytes,
            "allow_truncated": images.allow_truncated,
        },
    }
    return json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()


def _example_settings(example: ExampleConfig) -> dict[str, Any]:
    """A few-shot example as it shapes every answer: its prompt, its answer, and each image's
    source with (for a local file) its size and mtime, as the row hash takes a row's images."""
    images = []
    for source in example.image_list:
        if is_remote(source):  # an http(s) URL or an object store URI: as written, never fetched
            images.append([source, "url"])
            continue
        try:
            st = os.stat(source)
            images.append([source, f"{st.st_size}:{st.st_mtime_ns}"])
        except OSError:
            images.append([source, "missing"])
    return {"prompt": example.prompt, "answer": example.answer, "images": images}


def manifest_fingerprint(job: JobConfig, path: Path | ObjectPath) -> str:
    """What must be unchanged for a run to skip the sync: the file and the settings that make ids.
    A manifest in a bucket: its size, ETag and modification time (no byte of it is read)."""
    inp = job.input
    if isinstance(path, ObjectPath):
        return json.dumps(
            {
                "schema": SCHEMA_VERSION,
                "path": str(path),
                **path.fingerprint(),
                "input": [inp.id_column, inp.image_column, inp.prompt_column, inp.prompt],
            },
            sort_keys=True,
        )
    st = os.stat(path)
    edges = hashlib.sha256()
    with open(path, "rb") as fh:
        edges.update(fh.read(_EDGE_BYTES))
        if st.st_size > _EDGE_BYTES:
            fh.seek(max(_EDGE_BYTES, st.st_size - _EDGE_BYTES))
            edges.update(fh.read(_EDGE_BYTES))
    return json.dumps(
        {
            "schema": SCHEMA_VERSION,
            "path": str(path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino,
            "edges": edges.hexdigest(),
            "input": [inp.id_column, inp.image_column, inp.prompt_column, inp.prompt],
        },
        sort_keys=True,
    )


class BackgroundSync:
    """The manifest synced into the state beside the run, by a process of its own (or a thread).

    The process (the default, :data:`SYNC_IN_PROCESS`) has its own connection to the state (WAL:
    the run's writes and the sync's chunks take turns) and runs at the lowest CPU priority.
    Reading, hashing and inserting 10 million rows costs minutes of CPU; in a thread that would
    hold the GIL against the event loop and slow the requests in flight (issue 13: 0.85x of a
    small job's rows/s, against 1.0x with the sync in a process). The process reports each
    committed chunk, and then its report or its error, over a pipe that a relay thread turns into
    :class:`~batcher.state.SyncGate` calls; it stops after its current chunk when asked or when the
    run is gone (the pipe's end closes, and on Linux the kernel kills it with its parent).
    """

    def __init__(
        self,
        state: JobState,
        rows: Callable[[], Iterable[Row]],
        pass_id: int,
        hasher: ContentHasher,
        fingerprint: str,
        *,
        chunk: int = BACKGROUND_CHUNK,
        in_process: bool | None = None,
    ) -> None:
        self.state = state
        self.gate = SyncGate()
        self._job = _SyncJob(str(state.out_dir), rows, pass_id, hasher.settings, fingerprint, chunk)
        self._in_process = SYNC_IN_PROCESS if in_process is None else in_process
        self._process: BaseProcess | None = None
        self._pipe: Connection | None = None
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def start(self) -> BackgroundSync:
        self._started = time.monotonic()
        if self._in_process:
            spawn = multiprocessing.get_context("spawn")
            ours, theirs = spawn.Pipe()
            self._process = spawn.Process(
                target=_sync_in_child, args=(self._job, theirs), name="batcher-sync", daemon=True
            )
            self._process.start()
            theirs.close()  # the child's end: our reads then see EOF when the child is gone
            self._pipe = ours
            self._thread = threading.Thread(target=self._relay, name="batcher-sync-relay", daemon=True)
        else:
            self._thread = threading.Thread(target=self._run_here, name="batcher-sync", daemon=True)
        self._thread.start()
        return self

    def _run_here(self) -> None:
        try:
            report = self._job.run(self.state, self.gate)
        except BaseException as exc:  # handed to the run through the gate, never lost
            self.gate.fail(exc)
        else:
            self.gate.finish(report)

    def _relay(self) -> None:
        assert self._pipe is not None and self._process is not None
        try:
            while True:
                kind, value = self._pipe.recv()
                if kind == "advance":
                    self.gate.advance(value)
                elif kind == "finish":
                    self.gate.finish(value)
                    return
                else:
                    self.gate.fail(value)
                    return
        except (EOFError, OSError):
            self._process.join(5)
            if not self.gate.settled and not self.gate.cancelled:
                self.gate.fail(
                    StateError(
                        f"the manifest sync (pid {self._process.pid}) ended without a word "
                        f"({_ended(self._process.exitcode)}); nothing is lost: run the job again"
                    )
                )

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
        """Stop after the current chunk (if still running) and wait for it."""
        self.gate.cancel()
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.send(("cancel", None))
        if self._process is not None:
            self._process.join(STOP_WAIT_S)
            if self._process.is_alive():  # a chunk stuck on the disk: its transaction rolls back
                self._process.kill()
                self._process.join()
        if self._thread is not None:
            self._thread.join()
        if self._pipe is not None:
            self._pipe.close()


@dataclass(frozen=True)
class _SyncJob:
    """What a sync needs, picklable: the child process rebuilds the rest from it."""

    out_dir: str
    rows: Callable[[], Iterable[Row]]
    pass_id: int
    settings: bytes
    fingerprint: str
    chunk: int

    def run(self, state: JobState, gate: SyncProgress) -> SyncReport:
        return state.sync_rows(
            self.rows(),
            self.pass_id,
            hasher=ContentHasher(self.settings),
            gate=gate,
            fingerprint=self.fingerprint,
            chunk=self.chunk,
        )


class _PipeProgress:
    """The child's side of the gate: chunks go up the pipe; a message or EOF down it means stop."""

    def __init__(self, pipe: Connection) -> None:
        self._pipe = pipe
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        if not self._cancelled and self._pipe.poll():
            self._cancelled = True
        return self._cancelled

    def advance(self, index: int) -> None:
        self._pipe.send(("advance", index))


def _sync_in_child(job: _SyncJob, pipe: Connection) -> None:
    """The sync process: lowest priority, gone with its parent, its outcome sent up the pipe."""
    # The run decides when the sync stops (a Ctrl-C reaches the whole process group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.nice(19)
    try:
        with JobState.open(job.out_dir) as state:
            outcome: tuple[str, object] = ("finish", job.run(state, _PipeProgress(pipe)))
    except BaseException as exc:
        outcome = ("fail", _portable(exc))
    with contextlib.suppress(OSError):
        pipe.send(outcome)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (the run reads its type), else a StateError saying it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return StateError(f"the manifest sync failed: {type(exc).__name__}: {exc}")
    return exc


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the run's process dies (kill -9 included), so a
    sync never outlives its run and writes beside the next one."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the run died before that took effect
        os._exit(0)


def _ended(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


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
    sync = BackgroundSync(
        state, manifest.rows, pass_id, ContentHasher(settings), fingerprint, chunk=BACKGROUND_CHUNK
    )
    state.sync_gate = sync.gate
    return sync.start()


async def rows_from_thread(
    batches: Iterator[list[Row]],
    stop: Callable[[BaseException], None],
    fatal: tuple[type[BaseException], ...],
) -> AsyncGenerator[Row, None]:
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
