"""The Files API's store: uploaded files in memory, with their expiry.

Unknown, deleted and expired ids are all None here (:meth:`FileStore.get`,
:meth:`FileStore.image_bytes`); the routes (:mod:`batcher.simulator.files`) and messages
validation turn that into the API's 404. Expiry runs on the monotonic clock. The API's shortest
expiry is an hour, so tests end a file's life early with :meth:`FileStore.expire` (a
simulator-only control, not part of ``/v1``). Every change of the bytes held is reported to the
ledger (``files_bytes_stored``).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batcher.simulator.ledger import Ledger
from batcher.simulator.wire import new_id, rfc3339


@dataclass
class StoredFile:
    id: str
    seq: int
    filename: str
    mime_type: str
    data: bytes
    created_at: dt.datetime
    expires_at: dt.datetime | None
    #: monotonic time at which the file stops existing; None: never
    deadline: float | None

    def metadata(self) -> dict[str, Any]:
        """The ``BetaFileMetadataSchema`` object (plus ``expires_at``, which the SDK reads)."""
        return {
            "id": self.id,
            "type": "file",
            "filename": self.filename,
            "mime_type": self.mime_type,
            "size_bytes": len(self.data),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at) if self.expires_at else None,
            "downloadable": False,
        }


class FileStore:
    """Uploaded files, in memory. Safe to call from worker threads (messages validation does).

    ``clock`` is the monotonic clock expiry runs on; tests may replace it.
    """

    def __init__(self, ledger: Ledger, clock: Callable[[], float] = time.monotonic) -> None:
        self.ledger = ledger
        self.clock = clock
        self._files: dict[str, StoredFile] = {}
        #: every id ever issued -> its sequence number, so cursors outlive their files
        self._seqs: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, data: bytes, filename: str, mime_type: str, expires_in_s: int | None = None) -> StoredFile:
        """Store an upload and return it."""
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            seq = len(self._seqs)
            stored = StoredFile(
                id=new_id("file"),
                seq=seq,
                filename=filename,
                mime_type=mime_type,
                data=data,
                created_at=now,
                expires_at=now + dt.timedelta(seconds=expires_in_s) if expires_in_s else None,
                deadline=self.clock() + expires_in_s if expires_in_s else None,
            )
            self._files[stored.id] = stored
            self._seqs[stored.id] = seq
        self._report()
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        """A live file, or None (unknown, deleted or expired)."""
        with self._lock:
            stored = self._files.get(file_id)
            if stored is None or not self._expired(stored):
                return stored
            del self._files[file_id]
        self._report()
        return None

    def delete(self, file_id: str) -> bool:
        """Delete a live file; False when there was none to delete."""
        if self.get(file_id) is None:
            return False
        with self._lock:
            found = self._files.pop(file_id, None) is not None
        self._report()
        return found

    def expire(self, file_id: str) -> bool:
        """Simulator-only control: make a live file expire now (the API's minimum is an hour)."""
        with self._lock:
            stored = self._files.get(file_id)
            if stored is None:
                return False
            stored.deadline = self.clock()
            stored.expires_at = dt.datetime.now(dt.UTC)
        self.get(file_id)  # drop it now, so the bytes stored say so at once
        return True

    def live(self) -> list[StoredFile]:
        """Every live file, newest first (expired ones are dropped on the way)."""
        with self._lock:
            gone = [f.id for f in self._files.values() if self._expired(f)]
            for file_id in gone:
                del self._files[file_id]
            files = sorted(self._files.values(), key=lambda f: f.seq, reverse=True)
        if gone:
            self._report()
        return files

    def seq_of(self, file_id: str) -> int | None:
        """The sequence number of any id this store ever issued (a list cursor)."""
        with self._lock:
            return self._seqs.get(file_id)

    def image_bytes(self, file_id: str) -> tuple[bytes, str] | None:
        """The stored bytes and mime type of a live file, or None (unknown, deleted, expired)."""
        stored = self.get(file_id)
        return None if stored is None else (stored.data, stored.mime_type)

    @property
    def bytes_stored(self) -> int:
        """Bytes held by live files."""
        return sum(len(f.data) for f in self.live())

    def _expired(self, stored: StoredFile) -> bool:
        return stored.deadline is not None and self.clock() >= stored.deadline

    def _report(self) -> None:
        with self._lock:
            total = sum(len(f.data) for f in self._files.values())
        self.ledger.files_stored(total)
