"""The Files API side of a job: upload each distinct prepared image once, refer to it by file id.

An image is known by the sha256 of the bytes that would be sent (``PreparedImage.sha256``). The
sha256 → file id map lives in the job state (``files`` table), so reruns and rows added later reuse
earlier uploads. Within a run:

- **one upload per image**: rows that need an image being uploaded wait for that upload
  (single-flight per hash) instead of starting their own;
- **a budget of its own**: the Files API is limited apart from messages (about
  ``facts.FILES_RPM`` requests a minute in the beta), so uploads pass a continuously refilled
  bucket and a small concurrency limiter, and retry with :func:`batcher.retry.retrying`;
- **stale ids are replaced**: a file id past (or near) its ``expires_at``, or one a messages call
  answered 404 for, is uploaded again and the state updated. "Near" is five minutes online and a
  batch's whole life (24 h) in batch mode, capped at half of ``images.files_expire_s``: a batch job
  that sets a shorter expiry than a batch may take risks 404s inside its batches.

Errors::

    FilesError                  anything this module cannot do
    └── UploadError             an image could not be uploaded (``error_type`` "upload_failed");
                                ``retryable``: it ran out of retries (leave the row for the next run)

Cleanup (:func:`delete_files`) deletes a job's uploads through the API; a 404 counts as already gone.
``batcher files list|delete`` is :mod:`batcher.commands.files`. Nothing here prints: the end of a run
says what it uploaded and deleted through the run's ``say``.
"""

from __future__ import annotations

import datetime as dt
import functools
import mimetypes
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

import anyio

from batcher import facts
from batcher.api import errors
from batcher.errors import BatcherError
from batcher.retry import RetryPolicy, retrying
from batcher.state import FileRecord
from batcher.urls import scheme_of

if TYPE_CHECKING:
    from batcher.api.client import Client
    from batcher.config import JobConfig
    from batcher.core.notices import Say
    from batcher.core.outcomes import Counters
    from batcher.images.prepare import PreparedImage

T = TypeVar("T")

#: A recorded file this close to its expiry is uploaded again rather than referred to: a request
#: that names it may be queued or retried for a while before the API reads it.
EXPIRY_MARGIN_S: Final = 300.0
#: In batch mode the API may read a request up to a batch's whole life after it was submitted.
BATCH_EXPIRY_MARGIN_S: Final = facts.BATCH_EXPIRY_HOURS * 3600.0 + EXPIRY_MARGIN_S
#: Seconds of the rate budget the bucket may hold at once (a burst of rpm/10 requests).
BURST_WINDOW_S: Final = 6.0
#: Uploads retry less patiently than rows: a row waiting on an upload holds a pipeline slot.
UPLOAD_POLICY: Final = RetryPolicy(max_attempts=5, max_wait_s=120.0)

_FILE_ID = re.compile(r"\bfile_[A-Za-z0-9_-]+")


class FilesError(BatcherError):
    """Something the Files API side of a job could not do."""

    error_type = "files_error"


class UploadError(FilesError):
    """An image could not be uploaded; only the rows that need it fail."""

    error_type = "upload_failed"

    def __init__(self, message: str, *, retryable: bool = False, fatal: bool = False) -> None:
        super().__init__(message)
        #: it ran out of retries in this run (the next run may succeed)
        self.retryable = retryable
        #: nothing the job sends can succeed (401, 402)
        self.fatal = fatal


@runtime_checkable
class FileStore(Protocol):
    """The job state's record of uploaded files, as uploads and deletes use it."""

    def get_file(self, sha256: str) -> FileRecord | None: ...

    def put_file(self, record: FileRecord) -> None: ...

    def delete_file(self, sha256: str) -> None: ...

    def list_files(self) -> list[FileRecord]: ...


class _Image(Protocol):
    """What an upload needs of a prepared image (``batcher.images.prepare.PreparedImage``)."""

    data: bytes
    media_type: str
    sha256: str


# --- pure decisions ---------------------------------------------------------------------------------


def is_usable(record: FileRecord, now: float, margin_s: float = EXPIRY_MARGIN_S) -> bool:
    """A recorded upload may still be referred to: it never expires, or not within ``margin_s``."""
    return record.expires_at is None or record.expires_at - margin_s > now


def stale_file_ids(message: str, file_ids: Sequence[str]) -> list[str]:
    """The file ids of a request that a 404 answer is about.

    The ids the message names; when it names none of them but is about a file, all of them (the
    API's wording may change; a re-upload of a live file only costs one upload).
    """
    named = set(_FILE_ID.findall(message))
    hit = [f for f in dict.fromkeys(file_ids) if f in named]
    if hit:
        return hit
    return list(dict.fromkeys(file_ids)) if "file" in message.lower() else []


def parse_expires_at(value: Any) -> float | None:
    """The API's ``expires_at`` (RFC 3339, or None) as a Unix time."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def upload_name(source: str, sha256: str, media_type: str) -> str:
    """A readable file name for an upload: the source's stem and the extension of what is sent."""
    stem = PurePosixPath(source.split("?", 1)[0].replace("\\", "/")).stem or sha256[:16]
    ext = {"image/jpeg": ".jpg"}.get(media_type) or mimetypes.guess_extension(media_type) or ""
    return f"{stem[:200]}{ext}"


# --- the budget ---------------------------------------------------------------------------------------


class RefillBucket:
    """A continuously refilled token bucket: ``per_minute`` requests a minute, bursts of a few."""

    def __init__(
        self,
        per_minute: float,
        *,
        burst_window_s: float = BURST_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_window_s)
        self.level = self.capacity
        self._clock = clock
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    def take(self) -> float:
        """Take one request now and answer 0.0, or answer the seconds until one is available."""
        self._refill()
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / self.rate

    def pause(self, seconds: float | None) -> None:
        """After a 429: no request for ``seconds`` (a second when the API did not say)."""
        self._refill()
        self.level = min(self.level, -self.rate * (1.0 if seconds is None else seconds))

    async def acquire(self) -> None:
        while (wait := self.take()) > 0:
            await anyio.sleep(wait)


@dataclass
class FilesBudget:
    """What every Files API call of a job passes: the bucket, the limiter, the retry policy."""

    rpm: float = float(facts.FILES_RPM)
    concurrency: int = 4
    policy: RetryPolicy = UPLOAD_POLICY
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.bucket = RefillBucket(self.rpm)
        self.limiter = anyio.CapacityLimiter(self.concurrency)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` within the budget, retried on retryable errors; raises the last error."""
        async for attempt in retrying(self.policy, self.rng):
            with attempt:
                await self.bucket.acquire()
                async with self.limiter:
                    try:
                        return await fn()
                    except errors.RateLimitError as exc:
                        self.bucket.pause(exc.retry_after)
                        raise
        raise AssertionError("unreachable: tenacity reraises the last error")


# --- prepared once per run ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceKey:
    """A local image file as it is now, and how many images share its request (sizing depends on it)."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    images_in_request: int


class PrepareMemo:
    """Images this run has prepared, by source file: several questions about one image prepare it once.

    The upload is shared by hash already; this saves the decode and encode before it. A file that
    changes on disk (size, mtime or inode) is a new key. Rows asking for an image being prepared
    wait for that preparation (rows about one image often come together). Bounded in bytes, least
    recently used out. URLs are not remembered (what they name may change).
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self._items: dict[SourceKey, PreparedImage] = {}
        self._preparing: dict[SourceKey, anyio.Event] = {}

    async def prepare(
        self, source: str, images_in_request: int, fn: Callable[[str, int], Awaitable[PreparedImage]]
    ) -> PreparedImage:
        """``await fn(source, images_in_request)``, or what it answered for this file before.

        A failure is not remembered: each row that needs the image meets its error itself.
        """
        key = self.key(source, images_in_request)
        while key is not None and (busy := self._preparing.get(key)) is not None:
            await busy.wait()
        image = self.get(key)
        if image is not None:
            return image
        if key is None:
            return await fn(source, images_in_request)
        done = self._preparing[key] = anyio.Event()
        try:
            image = await fn(source, images_in_request)
        finally:
            del self._preparing[key]
            done.set()
        self.put(key, image)
        return image

    @staticmethod
    def key(source: str, images_in_request: int) -> SourceKey | None:
        if scheme_of(source) is not None:  # a URL (or a refused scheme): not a file to key by
            return None
        try:
            st = os.stat(source)
        except OSError:
            return None  # the pool reports the file's own error
        return SourceKey(source, st.st_size, st.st_mtime_ns, st.st_ino, images_in_request)

    def get(self, key: SourceKey | None) -> PreparedImage | None:
        if key is None:
            return None
        image = self._items.pop(key, None)
        if image is not None:
            self._items[key] = image  # most recently used last
            self.hits += 1
        return image

    def put(self, key: SourceKey | None, image: PreparedImage) -> None:
        size = len(image.data)
        if key is None or key in self._items or size > self.max_bytes:
            return
        self._items[key] = image
        self.bytes += size
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._items))
            self.bytes -= len(self._items.pop(oldest).data)


# --- uploads --------------------------------------------------------------------------------------------


@dataclass
class _Flight:
    """One upload in progress; rows needing the same image wait on ``done``."""

    done: anyio.Event = field(default_factory=anyio.Event)
    error: UploadError | None = None


@dataclass
class UploadStats:
    uploads: int = 0
    bytes: int = 0
    #: uploads of an image whose earlier file id was gone (404) or expiring
    replaced: int = 0
    reused: int = 0


class FileUploader:
    """``await uploader.file_id(image, source)``: the image's file id, uploading it at most once.

    ``state`` is the job state (``get_file`` / ``put_file``); ``clock`` is wall time, which is
    what ``expires_at`` is measured in.
    """

    def __init__(
        self,
        client: Client,
        state: FileStore,
        *,
        beta: str = facts.FILES_BETA,
        expires_in_s: int | None = None,
        budget: FilesBudget | None = None,
        margin_s: float = EXPIRY_MARGIN_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.state = state
        self.beta = beta
        self.expires_in_s = expires_in_s
        self.budget = budget or FilesBudget()
        #: how long before its expiry a file stops being referred to; never more than half the
        #: life the job asks for, or every row would upload its image again
        self.margin_s = min(margin_s, expires_in_s / 2) if expires_in_s else margin_s
        self.clock = clock
        self.stats = UploadStats()
        #: prepared images by source file, for the pipeline's prepare stage
        self.prepared = PrepareMemo()
        self._flights: dict[str, _Flight] = {}

    @classmethod
    def for_job(cls, job: JobConfig, client: Client, state: FileStore) -> FileUploader:
        """The uploader a job's ``[images]`` table asks for."""
        imgs = job.images
        margin = BATCH_EXPIRY_MARGIN_S if job.run.mode == "batch" else EXPIRY_MARGIN_S
        return cls(
            client,
            state,
            beta=imgs.files_beta,
            expires_in_s=imgs.files_expire_s,
            budget=FilesBudget(rpm=imgs.files_rpm, concurrency=imgs.files_concurrency),
            margin_s=margin,
        )

    async def file_id(self, image: _Image, source: str, *, stale: str | None = None) -> str:
        """The file id to refer to ``image`` by; ``stale``: an id the API no longer knows.

        Every caller that needs the same image while it is being uploaded waits for that one
        upload; a caller naming a ``stale`` id that someone has already replaced gets the new id.
        """
        while True:
            record = self.state.get_file(image.sha256)
            usable = record is not None and is_usable(record, self.clock(), self.margin_s)
            if record is not None and record.file_id != stale and usable:
                self.stats.reused += 1
                return record.file_id
            flight = self._flights.get(image.sha256)
            if flight is None:
                break
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
        replacing = record is not None
        return await self._upload(image, source, replacing)

    async def _upload(self, image: _Image, source: str, replacing: bool) -> str:
        flight = self._flights[image.sha256] = _Flight()
        try:
            record = await self._send(image, source)
        except UploadError as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[image.sha256]
            flight.done.set()
        self.state.put_file(record)
        self.stats.uploads += 1
        self.stats.bytes += record.bytes
        self.stats.replaced += replacing
        return record.file_id

    async def _send(self, image: _Image, source: str) -> FileRecord:
        name = upload_name(source, image.sha256, image.media_type)
        try:
            meta = await self.budget.call(
                lambda: self.client.upload_file(
                    image.data, name, image.media_type, beta=self.beta, expires_in_seconds=self.expires_in_s
                )
            )
        except errors.APIError as exc:
            raise UploadError(
                f"upload failed: {exc}", retryable=exc.retryable and not exc.fatal, fatal=exc.fatal
            ) from exc
        now = self.clock()
        expires_at = parse_expires_at(meta.get("expires_at"))
        if expires_at is None and self.expires_in_s:
            expires_at = now + self.expires_in_s
        return FileRecord(
            sha256=image.sha256,
            file_id=str(meta["id"]),
            bytes=int(meta.get("size_bytes") or len(image.data)),
            uploaded_at=now,
            expires_at=expires_at,
        )


# --- cleanup ----------------------------------------------------------------------------------------------


@dataclass
class DeleteReport:
    deleted: int = 0
    already_gone: int = 0
    bytes: int = 0
    #: (file id, why) for files that could not be deleted; they stay in the state
    failed: list[tuple[str, str]] = field(default_factory=list)


async def delete_files(
    client: Client,
    state: FileStore,
    records: Iterable[FileRecord],
    *,
    beta: str = facts.FILES_BETA,
    budget: FilesBudget | None = None,
) -> DeleteReport:
    """Delete ``records`` through the API and forget them in ``state``; a 404 is already gone."""
    budget = budget or FilesBudget()
    report = DeleteReport()
    for record in records:
        try:
            await budget.call(functools.partial(client.delete_file, record.file_id, beta=beta))
            report.deleted += 1
        except errors.NotFoundError:
            report.already_gone += 1
        except errors.APIError as exc:
            if exc.fatal:
                raise
            report.failed.append((record.file_id, str(exc)))
            continue
        report.bytes += record.bytes
        # Only forget a record that still names this id (a run may have replaced it since).
        current = state.get_file(record.sha256)
        if current is not None and current.file_id == record.file_id:
            state.delete_file(record.sha256)
    return report


async def finish_run(uploader: FileUploader, counters: Counters, say: Say, *, delete_at_end: bool) -> None:
    """End of a ``transport = "files"`` run: say what was uploaded; delete the job's files if asked
    and the job has nothing left to send (an unfinished job keeps them for its next run)."""
    s = uploader.stats
    if s.uploads or s.reused:
        say(
            f"files: {s.uploads:,} uploaded ({s.bytes:,} bytes, {s.replaced:,} replacing gone ids), "
            f"{s.reused:,} references to earlier uploads, {uploader.prepared.hits:,} images "
            "prepared once for several rows"
        )
    finished = counters.stop_reason is None and not counters.left_for_next_run
    if not (delete_at_end and finished):
        return
    report = await delete_files(
        uploader.client,
        uploader.state,
        uploader.state.list_files(),
        beta=uploader.beta,
        budget=uploader.budget,
    )
    say(
        f"files: deleted {report.deleted + report.already_gone:,} ({report.bytes:,} bytes; "
        f"{report.already_gone:,} were already gone)"
    )
    for file_id, why in report.failed:
        say(f"batcher: warning: could not delete {file_id}: {why} (see `batcher files delete`)")
