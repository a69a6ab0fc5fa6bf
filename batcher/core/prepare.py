"""The row preparer: a :class:`~batcher.records.Row` becomes a :class:`Prepared` request, or a row
failure. Online mode, batch mode and ``batcher estimate --exact-sample`` all prepare through it, so
the three size, encode and refer to images the same way, within the image pool's time and memory
bounds; the two reading stages both drivers run (:meth:`RowPreparer.feed`, :meth:`RowPreparer.stage`)
live here too.

Stopping takes effect at once: downloads and preparations in flight are cancelled (their pool
workers killed) by :meth:`RowPreparer.cancel_unsent`, since nothing they make would be sent.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from batcher.api.bodies import ImagePart
from batcher.api.download import DownloadLimits
from batcher.config import JobConfig
from batcher.core.failures import RowFailure, failure_outcome, image_failure, upload_failure
from batcher.core.outcomes import Counters, Prepared, Written
from batcher.core.plan import job_image_options
from batcher.core.seams import Downloader, ImagePreparer, RunState
from batcher.images.errors import ImageError
from batcher.images.prepare import PreparedImage
from batcher.images.sizing import ImageOptions
from batcher.models import ModelProfile
from batcher.records import ImageSent, Row
from batcher.stores import StoreError
from batcher.urls import is_object, is_url

if TYPE_CHECKING:
    from batcher.files import FileUploader, UploadError


class Stopped(Exception):
    """An image's download or preparation was cancelled because the run is stopping."""


#: Bytes base64-encoded per call (a multiple of 3, so the pieces join into one encoding): each call
#: holds the GIL for well under a millisecond, so the event loop's thread is never kept waiting.
B64_CHUNK = 3 * 64 * 1024


def b64_text(data: bytes) -> str:
    """``base64.b64encode(data)`` as text, in pieces (see :data:`B64_CHUNK`); run it in a thread."""
    view = memoryview(data)
    return b"".join(base64.b64encode(view[i : i + B64_CHUNK]) for i in range(0, len(view), B64_CHUNK)).decode(
        "ascii"
    )


def preparers_for(pool: ImagePreparer) -> int:
    """Rows prepared at once: two per pool worker (one decoding while the other's image travels)."""
    return max(2, 2 * pool.workers)


@dataclass
class RowPreparer:
    """Prepares the rows of one job for one model (see the module doc)."""

    profile: ModelProfile
    #: None only where no image is prepared here (a benchmark of the request stage)
    pool: ImagePreparer | None
    options: ImageOptions
    #: ``[images] transport``: "base64", "url" (URLs go as they are) or "files"
    transport: str
    #: fetches image URLs when the transport sends bytes (None: no URL is ever downloaded)
    downloader: Downloader | None
    download_limits: DownloadLimits
    #: set when the run stops: nothing more is prepared
    stopping: anyio.Event
    #: transport "files": uploads each prepared image once (``batcher.files``)
    uploader: FileUploader | None = None
    #: an upload found that nothing the job sends can succeed (401, 402): the run stops
    on_fatal: Callable[[BaseException], None] | None = None
    #: images every request carries besides the row's own (the few-shot examples'): a row's images
    #: are sized for the request's whole count (above 20, the API's many-image limit applies)
    shared_images: int = 0
    #: cancel scopes of the downloads and image preparations in flight (cancelled by a stop)
    _unsent: set[anyio.CancelScope] = field(default_factory=set)

    @classmethod
    def for_job(
        cls,
        job: JobConfig,
        profile: ModelProfile,
        pool: ImagePreparer | None,
        *,
        downloader: Downloader | None,
        state: RunState | None,
        stopping: anyio.Event,
        uploader: FileUploader | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        shared_images: int = 0,
    ) -> RowPreparer:
        """The preparer a job's ``[images]`` table asks for (and its uploader, for "files")."""
        imgs = job.images
        if uploader is None and imgs.transport == "files":
            from batcher.api.client import Client
            from batcher.files import FileStore, FileUploader

            # The Files transport needs more than the core's seams: the API's files routes, and a
            # state that keeps the hash -> file id map.
            if not isinstance(downloader, Client) or not isinstance(state, FileStore):
                raise TypeError(
                    "the files transport needs the API client and a job state that keeps file ids"
                )
            uploader = FileUploader.for_job(job, downloader, state)
        return cls(
            profile=profile,
            pool=pool,
            options=job_image_options(job),
            transport=imgs.transport,
            downloader=downloader,
            download_limits=DownloadLimits(
                timeout_s=imgs.download_timeout_s,
                max_bytes=imgs.download_max_bytes,
                allow_private=imgs.allow_private_urls,
            ),
            stopping=stopping,
            uploader=uploader,
            on_fatal=on_fatal,
            shared_images=shared_images,
        )

    def cancel_unsent(self) -> None:
        """Cancel the downloads and image preparations in flight (the run is stopping)."""
        for scope in list(self._unsent):
            scope.cancel()

    # --- the stages both drivers run --------------------------------------------------------------

    async def feed(
        self,
        rows: Iterable[Row] | AsyncIterable[Row],
        out: ObjectSendStream[Row],
        results: ObjectSendStream[Written],
        counters: Counters,
    ) -> None:
        """Rows to prepare; a row bad at read time goes straight to the writer as its error."""
        async with out, results:
            async for row in as_async(rows):
                if self.stopping.is_set():
                    return
                counters.total += 1
                if row.error is not None:
                    await results.send(failure_outcome(row.error, row, None))
                else:
                    await out.send(row)

    async def stage(
        self,
        rows: ObjectReceiveStream[Row],
        out: ObjectSendStream[Prepared],
        results: ObjectSendStream[Written],
    ) -> None:
        """One preparing worker: prepared rows on to ``out``, row failures to the writer."""
        async with rows, out, results:
            async for row in rows:
                if self.stopping.is_set():
                    continue  # drain: a stopped run prepares nothing more
                got = await self.prepare(row)
                if isinstance(got, Prepared):
                    await out.send(got)
                elif got is not None:
                    await results.send(failure_outcome(got, row, self.profile))

    # --- one row ----------------------------------------------------------------------------------

    async def prepare(self, row: Row) -> Prepared | RowFailure | None:
        """The row prepared, the failure of its first image that cannot be sent, or None: the run
        stopped while its image was prepared (the next run sends it)."""
        try:
            return await self._prepare(row)
        except Stopped:
            return None

    async def prepare_row(self, row: Row) -> Prepared:
        """The row prepared; raises :class:`RowFailed` or :class:`Stopped`."""
        got = await self._prepare(row)
        if isinstance(got, RowFailure):
            raise RowFailed(got)
        return got

    async def _prepare(self, row: Row) -> Prepared | RowFailure:
        from batcher.files import UploadError

        parts: list[ImagePart] = []
        sent: list[ImageSent] = []
        warnings: list[str] = []
        uploaded: dict[int, PreparedImage] = {}
        transport = self.transport
        in_request = len(row.images) + self.shared_images
        for n, source in enumerate(row.images, start=1):
            if transport == "url" and is_url(source):
                parts.append(ImagePart("url", source))
                sent.append(ImageSent(source=source, transport="url"))
                continue
            # transport "files": an image several rows ask about is prepared once (batcher.files)
            memo = self.uploader.prepared if self.uploader is not None and transport == "files" else None
            try:
                if memo is not None:
                    image: PreparedImage = await memo.prepare(source, in_request, self.prepare_image)
                else:
                    image = await self.prepare_image(source, in_request)
            except ImageError as exc:
                return image_failure(row, exc, n)
            except StoreError as exc:
                # No row in this store can be read (its extra is not installed): the run stops with
                # the one line naming the extra; the row is left for the next run.
                if self.on_fatal is not None:
                    self.on_fatal(exc)
                return RowFailure(
                    "download_error", f"image {n} ({source}): {exc}", retryable=True, image_index=n
                )
            warnings.extend(image.warnings)
            sent.append(
                ImageSent(
                    source=source,
                    width=image.width,
                    height=image.height,
                    bytes=len(image.data),
                    media_type=image.media_type,
                    transport="base64",
                    tokens=image.tokens,
                )
            )
            if transport == "files":
                uploaded[len(parts)] = image
                try:
                    parts.append(await self.file_part(image, sent[-1]))
                except UploadError as exc:
                    return self.upload_failure(row, exc, n)
                continue
            # Off the event loop: a 5 MB image takes milliseconds to encode, every request in flight
            # would wait for it (issue 13).
            parts.append(
                ImagePart("base64", await anyio.to_thread.run_sync(b64_text, image.data), image.media_type)
            )
        return Prepared(row, parts, sent, warnings, uploaded)

    async def prepare_image(self, source: str, images_in_request: int) -> PreparedImage:
        """Download (a URL), read (an object store URI) and prepare one image in the pool; raises
        :class:`Stopped` when the run stops meanwhile, at once, whatever the download or the worker
        was doing."""
        with anyio.CancelScope() as scope:
            self._unsent.add(scope)
            try:
                if self.stopping.is_set():
                    scope.cancel()
                if self.pool is None:
                    raise RuntimeError("RowPreparer: no image pool to prepare images in")
                data: str | bytes = source
                if is_url(source):
                    data = await self._download(source)
                elif is_object(source):
                    data = await self._read_object(source)
                return await self.pool.prepare(
                    data, self.profile, self.options, images_in_request=images_in_request
                )
            finally:
                self._unsent.discard(scope)
        raise Stopped(source)

    async def _download(self, url: str) -> bytes:
        """URLs are only fetched when the job sends bytes, not URLs; a failure (a ``DownloadError``
        type from :mod:`batcher.images.errors`) is the row's."""
        if self.downloader is None:
            raise RuntimeError(f"no downloader for {url}")
        return await self.downloader.fetch(url, self.download_limits)

    async def _read_object(self, uri: str) -> bytes:
        """An object store's image (``s3://``...), whatever the transport: the API cannot fetch a
        bucket, so its bytes are sent (as base64 or an uploaded file). Read in a worker thread
        within ``download_max_bytes`` and ``download_timeout_s``; a failure (``not_found``,
        ``permission_denied``, ``too_large``...) is the row's."""
        from batcher.stores import fetch_object

        limits = self.download_limits
        return await fetch_object(uri, limits.max_bytes, limits.timeout_s)

    # --- transport "files" (batcher.files) --------------------------------------------------------

    async def file_part(self, image: PreparedImage, sent: ImageSent, stale: str | None = None) -> ImagePart:
        """Refer to ``image`` by file id, uploading it if this job has not (or its id is gone);
        raises the ``UploadError``."""
        assert self.uploader is not None, "a file part without an uploader"
        file_id = await self.uploader.file_id(image, sent.source, stale=stale)
        sent.transport, sent.file_id = "file", file_id
        return ImagePart("file", file_id, image.media_type)

    # --- row failures -----------------------------------------------------------------------------

    def upload_failure(self, row: Row, exc: UploadError, index: int) -> RowFailure:
        """An image could not be uploaded: the row is left for the next run or, if final, an error;
        an answer that says nothing the job sends can succeed stops the run."""
        if exc.fatal and self.on_fatal is not None:
            self.on_fatal(exc)
        return upload_failure(row, exc, index)


class RowFailed(Exception):
    """:meth:`RowPreparer.prepare_row` found a row that cannot be sent."""

    def __init__(self, failure: RowFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


async def as_async(rows: Iterable[Row] | AsyncIterable[Row]) -> AsyncIterator[Row]:
    """Rows from either kind of iterable (the runner reads the manifest in a thread: async)."""
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
    else:
        for row in rows:
            yield row
