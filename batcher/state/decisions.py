"""The job state's pure decisions: which rows need work, which answers are stale, a row's hash.

No SQL runs here; the SQL that applies a rule (:func:`work_predicate`, :data:`CHANGED_SQL`) is
built from, or kept beside, the pure function it mirrors.
"""

from __future__ import annotations

import hashlib
import os
from typing import Literal

from batcher.records import Result, Row
from batcher.urls import is_object

STATUSES = ("done", "error", "transient", "inflight", "batched")
Status = Literal["done", "error", "transient", "inflight", "batched"]
_STAT_CACHE_MAX = 65536


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


#: :func:`is_changed` in SQL, over ``rows r`` joined to ``results s``.
CHANGED_SQL = (
    "s.status IN ('done', 'error') AND s.answered_hash IS NOT NULL AND r.hash IS NOT NULL "
    "AND s.answered_hash != r.hash"
)


def work_predicate(retry_errors: bool) -> tuple[str, list[str]]:
    """SQL for :func:`needs_work` over a LEFT JOINed ``s.status``, built from the pure function."""
    statuses = [s for s in STATUSES if needs_work(s, retry_errors)]
    clauses = []
    if needs_work(None, retry_errors):
        clauses.append("s.status IS NULL")
    if statuses:
        clauses.append(f"s.status IN ({','.join('?' * len(statuses))})")
    return "(" + " OR ".join(clauses or ["0"]) + ")", statuses


def status_for(result: Result, final: bool) -> Status:
    """The state status a finished result gets."""
    if result.status == "ok":
        return "done"
    return "error" if final else "transient"


class ContentHasher:
    """The content hash of what would be sent for a row: 8 bytes of BLAKE2b, as a signed int.

    It covers the rendered prompt, each image source as resolved, and for a local image file its
    size and mtime_ns (an http(s) URL or an object store URI: the source only; hashing image bytes
    would read every image on every run: far too slow at millions of rows; an edit that keeps both
    is not seen), plus ``settings``: the job's request
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
        elif is_object(source):
            found = b"|object"  # like a URL: its URI only, never a HEAD per row
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
