"""Object stores (S3, GCS, Azure) through fsspec: the one seam every part of batcher that reads or
writes a bucket goes through.

* Which store a URI belongs to comes from :data:`batcher.urls.OBJECT_SCHEMES` (``s3://``,
  ``gs://``/``gcs://``, ``az://``/``abfs://``/``abfss://``); each needs an optional extra
  (:data:`EXTRAS`: ``batcher[s3]`` brings s3fs, ``[gcs]`` gcsfs, ``[azure]`` adlfs). A missing one is
  a :class:`StoreError` naming the extra to install.
* One filesystem per store, made on first use and reused (:func:`filesystem`). Credentials and
  endpoints come from the store's own environment and config files (for S3: ``AWS_ENDPOINT_URL``,
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws/config``...), never from
  the job file; batcher neither logs nor writes them.
* Reads are bounded: an object's size is asked first and checked against the cap (``[images]
  download_max_bytes`` for an image) before a byte is downloaded, then the object comes in one
  ranged GET of exactly that size (:func:`read_object`).
* The store's transient errors (throttling, 5xx, timeouts, cut connections) are retried a few times
  with tenacity (:func:`retrying`), on top of the store client's own retries; what is transient, and
  what a failure means for the row, are pure functions of the exception (:func:`classify`): a missing
  object is the row's ``not_found``, a forbidden one ``permission_denied``, never the job's.
* fsspec's calls are blocking: the run makes them in a worker thread (:func:`fetch_object`), never on
  the event loop.

fsspec and the store packages are imported on first use only: ``batcher --help`` imports none.
"""

from __future__ import annotations

import errno
import importlib
import os
import posixpath
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal, Protocol, TypeVar

from batcher.errors import JobError
from batcher.exits import EXIT_CONFIG
from batcher.images.errors import (
    DownloadError,
    DownloadTimeout,
    DownloadTooLarge,
    ImageError,
    NotAFile,
    NotFound,
    PermissionDenied,
)
from batcher.urls import OBJECT_SCHEMES, scheme_of

if TYPE_CHECKING:
    import tenacity

T = TypeVar("T")

#: Each store: the package its fsspec filesystem comes from, the extra that installs it, and the
#: protocol fsspec knows it by.
EXTRAS: Final[dict[str, tuple[str, str, str]]] = {
    "s3": ("s3fs", "s3", "s3"),
    "gcs": ("gcsfs", "gcs", "gcs"),
    "azure": ("adlfs", "azure", "abfs"),
}
#: Attempts at one store call when its errors are transient (the client retries inside each too).
ATTEMPTS: Final = 4
#: Seconds between attempts: exponential from this, with jitter, at most :data:`MAX_WAIT_S`.
FIRST_WAIT_S: Final = 0.25
MAX_WAIT_S: Final = 4.0

#: What a store's failure means: the object is missing, forbidden, the call may succeed if made
#: again, or anything else (a broken request, an unknown error).
ErrorKind = Literal["not_found", "permission_denied", "transient", "error"]

_TRANSIENT_ERRNOS: Final = frozenset(
    {
        errno.EBUSY,  # s3fs: SlowDown, 503 ServiceUnavailable
        getattr(errno, "EREMOTEIO", errno.EIO),  # s3fs: 500 InternalError
        errno.EAGAIN,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.EPIPE,
    }
)
#: Exception class names of the store clients' transient failures (botocore, aiohttp, azure-core,
#: google-auth), matched by name so this module imports none of them.
_TRANSIENT_NAMES: Final = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "IncompleteRead",
        "ResponseParserError",
        "HTTPClientError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ClientOSError",
        "ServiceRequestError",
        "ServiceResponseError",
        "TransportError",
        "FSTimeoutError",
    }
)


class StoreError(JobError):
    """An object store the job needs cannot be used at all: its extra is not installed (exit 2), the
    manifest or the results prefix cannot be read or written (exit 1). A single image's failure is
    the row's (an ``ImageError``), never this."""


def store_of(uri: str) -> str | None:
    """The store (``s3``, ``gcs``, ``azure``) of an object store URI; None for anything else."""
    scheme = scheme_of(uri)
    return OBJECT_SCHEMES.get(scheme) if scheme is not None else None


def missing_extra(store: str) -> str:
    """The one line for a store whose package is not installed."""
    package, extra, _protocol = EXTRAS[store]
    schemes = ", ".join(f"{s}://" for s, st in OBJECT_SCHEMES.items() if st == store)
    return f'{schemes} URIs need {package}: pip install "batcher[{extra}]"'


# --- errors: pure decisions ----------------------------------------------------------------------


def _status(exc: BaseException) -> int | None:
    """The HTTP status a store client's error carries (gcsfs ``code``, azure ``status_code``)."""
    for name in ("status_code", "code", "status"):
        value = getattr(exc, name, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    return None


def classify(exc: BaseException) -> ErrorKind:
    """What a store call's exception means (see :data:`ErrorKind`). s3fs turns S3's error codes into
    Python's (``NoSuchKey`` -> ``FileNotFoundError``, ``AccessDenied`` -> ``PermissionError``,
    ``SlowDown``/503 -> ``OSError(EBUSY)``, 500 -> ``OSError(EREMOTEIO)``, ``RequestTimeout`` ->
    ``TimeoutError``); gcsfs and adlfs raise errors with an HTTP status."""
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, PermissionError):
        return "permission_denied"
    if isinstance(exc, TimeoutError | ConnectionError):
        return "transient"
    if type(exc).__name__ in _TRANSIENT_NAMES:
        return "transient"
    status = _status(exc)
    if status is not None:
        if status == 404:
            return "not_found"
        if status in (401, 403):
            return "permission_denied"
        if status in (408, 429) or status >= 500:
            return "transient"
        return "error"
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return "transient"
    return "error"


def is_transient(exc: BaseException) -> bool:
    """The call may succeed if made again (throttling, 5xx, a timeout, a cut connection)."""
    return classify(exc) == "transient"


def describe(exc: BaseException) -> str:
    """A short line for a store error: its type and the store's own message, never a credential
    (the store clients' messages name the bucket and key at most)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def image_error(exc: BaseException) -> ImageError:
    """A store failure while reading an image, as the row's error."""
    kind = classify(exc)
    if kind == "not_found":
        return NotFound("no such object in the store")
    if kind == "permission_denied":
        return PermissionDenied(f"the store refused to read it ({describe(exc)})")
    if kind == "transient":
        return DownloadError(f"the store kept failing after {ATTEMPTS} attempts ({describe(exc)})")
    return DownloadError(f"cannot read the object ({describe(exc)})")


def retrying(attempts: int = ATTEMPTS, *, sleep: Callable[[float], None] | None = None) -> tenacity.Retrying:
    """A tenacity controller for one store call: transient errors only, at most ``attempts`` calls,
    exponential waits with jitter; the last error is raised as it is."""
    import tenacity

    kwargs: dict[str, Any] = {} if sleep is None else {"sleep": sleep}
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=FIRST_WAIT_S, max=MAX_WAIT_S)
        + tenacity.wait_random(0, FIRST_WAIT_S),
        retry=tenacity.retry_if_exception(is_transient),
        reraise=True,
        **kwargs,
    )


def call(fn: Callable[[], T], *, attempts: int = ATTEMPTS) -> T:
    """``fn()``, retried on the store's transient errors (blocking: run it in a thread)."""
    for attempt in retrying(attempts):
        with attempt:
            return fn()
    raise AssertionError("unreachable: tenacity reraises the last error")


# --- filesystems ---------------------------------------------------------------------------------

_FILESYSTEMS: dict[tuple[str, int], Any] = {}
_LOCK = threading.Lock()


def filesystem(uri_or_store: str) -> Any:
    """The fsspec filesystem of a store (``s3``...) or of the store a URI names, made once and
    reused; raises :class:`StoreError` when its extra is not installed.

    Made with the store's defaults: its credentials and endpoint come from its own environment and
    config (nothing from the job file). fsspec's instance cache is skipped: :func:`reset_filesystems`
    makes the next call build a new one (after the environment changed, as tests do)."""
    store = uri_or_store if uri_or_store in EXTRAS else store_of(uri_or_store)
    if store is None:
        raise ValueError(f"not an object store URI: {uri_or_store!r}")
    key = (store, os.getpid())  # a child process makes its own (a client's loop is not fork-safe)
    with _LOCK:
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            package, _extra, protocol = EXTRAS[store]
            try:
                importlib.import_module(package)
                import fsspec
            except ImportError:
                raise StoreError(missing_extra(store), exit_code=EXIT_CONFIG) from None
            fs = _FILESYSTEMS[key] = fsspec.filesystem(protocol, skip_instance_cache=True)
        return fs


def check_extras(uris: Iterable[str | None]) -> None:
    """Raise :class:`StoreError` (exit 2) for the first object store URI among ``uris`` whose extra
    is not installed: a job refused before anything is sent (its manifest, ``results_uri``,
    example images). Makes the filesystems; reads nothing."""
    for uri in uris:
        if uri is not None and store_of(uri) is not None:
            filesystem(uri)


def reset_filesystems() -> None:
    """Forget the filesystems made so far (the next use makes new ones from the environment)."""
    with _LOCK:
        _FILESYSTEMS.clear()


def strip(uri: str) -> str:
    """``uri`` as fsspec's filesystem names it (``bucket/key``, no scheme)."""
    return uri.split("://", 1)[1]


# --- reads ---------------------------------------------------------------------------------------


@contextmanager
def image_errors() -> Iterator[None]:
    """A store call for an image: its failures as the row's image errors."""
    try:
        yield
    except ImageError:
        raise
    except StoreError:
        raise
    except Exception as exc:
        raise image_error(exc) from None


def object_size(info: dict[str, Any]) -> int | None:
    """An object's size from its ``info`` (None for a directory: not an object)."""
    if info.get("type") == "directory":
        return None
    size = info.get("size")
    return int(size) if isinstance(size, int | float | str) and str(size).isdigit() else None


def too_large(size: int, max_bytes: int) -> str | None:
    """Why an object of ``size`` bytes is not downloaded (over ``[images] download_max_bytes``)."""
    if size > max_bytes:
        return f"{size:,} bytes, over the {max_bytes:,}-byte limit ([images] download_max_bytes)"
    return None


def read_object(uri: str, max_bytes: int, *, attempts: int = ATTEMPTS) -> bytes:
    """The bytes of one object, at most ``max_bytes``: its size asked first (one HEAD), then one
    ranged GET of exactly that size. Blocking; raises the row's ``ImageError`` types (``not_found``,
    ``permission_denied``, ``not_a_file``, ``too_large``, ``download_error``)."""
    with image_errors():
        fs = filesystem(uri)
        path = strip(uri)
        info = call(partial(fs.info, path), attempts=attempts)
        size = object_size(info)
        if size is None:
            raise NotAFile("a folder (a prefix), not an object")
        refused = too_large(size, max_bytes)
        if refused is not None:
            raise DownloadTooLarge(refused)
        if size == 0:
            return b""  # the image pool says empty_file
        data: bytes = call(partial(fs.cat_file, path, start=0, end=size), attempts=attempts)
        return data


async def fetch_object(uri: str, max_bytes: int, timeout_s: float) -> bytes:
    """:func:`read_object` in a worker thread, within ``timeout_s`` (``download_timeout``); a
    cancelled fetch (the run stops) is abandoned at once, its thread left to finish on its own."""
    import anyio
    import anyio.to_thread

    try:
        with anyio.fail_after(timeout_s):
            return await anyio.to_thread.run_sync(
                partial(read_object, uri, max_bytes), abandon_on_cancel=True
            )
    except TimeoutError:
        raise DownloadTimeout(f"not read within {timeout_s:g} s ([images] download_timeout_s)") from None


# --- a manifest in a bucket ----------------------------------------------------------------------

#: Bytes an object store file fetches at a time when a manifest is streamed through it.
MANIFEST_BLOCK: Final = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ObjectStat:
    """What :meth:`ObjectPath.stat` tells: the object's size."""

    st_size: int


@dataclass(frozen=True, slots=True)
class ObjectPath:
    """An object store URI standing where the manifest reader takes a :class:`pathlib.Path`: the
    few things it asks of one (``name``, ``suffix``, ``parent``, ``open("rb")``, ``is_file()``,
    ``stat()``). Picklable (the URI only): a sync process makes its own filesystem.

    ``open`` is an fsspec file that fetches :data:`MANIFEST_BLOCK` bytes a time with ranged GETs:
    the manifest is streamed, never downloaded whole first."""

    uri: str

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri.rstrip("/"))

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.uri.rstrip("/").rsplit("/", 1)[0])

    def _fail(self, exc: Exception) -> StoreError:
        return StoreError(f"input.manifest: cannot read {self.uri}: {describe(exc)}")

    def info(self) -> dict[str, Any]:
        """The object's metadata (size, ETag, modification time...); raises FileNotFoundError or
        :class:`StoreError`."""
        fs = filesystem(self.uri)
        fs.invalidate_cache(strip(self.uri))  # the store's word now, not a listing seen earlier
        try:
            info: dict[str, Any] = call(partial(fs.info, strip(self.uri)))
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self._fail(exc) from None
        return info

    def is_file(self) -> bool:
        try:
            return object_size(self.info()) is not None
        except FileNotFoundError:
            return False

    def stat(self) -> ObjectStat:
        size = object_size(self.info())
        if size is None:
            raise IsADirectoryError(self.uri)
        return ObjectStat(size)

    def open(self, mode: str = "rb") -> BinaryIO:
        if mode != "rb":
            raise ValueError("a manifest in an object store is only read")
        fs = filesystem(self.uri)
        try:
            fh: BinaryIO = call(partial(fs.open, strip(self.uri), "rb", block_size=MANIFEST_BLOCK))
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self._fail(exc) from None
        return fh

    def fingerprint(self) -> dict[str, str]:
        """What says the object is unchanged, from its metadata alone (no byte of it is read):
        size, ETag (or generation, MD5) and modification time, under whichever names the store
        gives them."""
        info = self.info()
        found = {"size": str(info.get("size"))}
        for name, keys in (
            ("etag", ("ETag", "etag", "md5Hash", "content_md5", "generation")),
            ("mtime", ("LastModified", "updated", "last_modified", "mtime")),
        ):
            value = next((info[k] for k in keys if info.get(k) is not None), None)
            found[name] = str(value)
        return found


# --- results_uri: the Parquet parts mirrored to a bucket -----------------------------------------

#: State meta: the prefix parts were mirrored to, and each part's local signature when uploaded.
MIRROR_META_KEY: Final = "stores.results_uri"


class MetaStore(Protocol):
    """Where the mirror keeps what it uploaded (the job state's meta table)."""

    def get_meta(self, key: str, default: Any = None) -> Any: ...

    def set_meta(self, key: str, value: object) -> None: ...


def part_signature(path: Path) -> str:
    """What says a local part is the file that was uploaded: size, mtime and inode (a part rewritten
    or merged is a new file, renamed into place: all three change)."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def plan_mirror(
    local: dict[str, str], uploaded: dict[str, str], held: frozenset[str] = frozenset()
) -> tuple[list[str], list[str]]:
    """``(to upload, to delete)``: the parts whose local signature differs from what was uploaded
    (new, rewritten), and the uploaded parts that are no longer local (merged by a compaction,
    dropped). ``held`` parts (dirty or pending: about to change) are left as they are."""
    uploads = sorted(n for n, sig in local.items() if n not in held and uploaded.get(n) != sig)
    deletes = sorted(n for n in uploaded if n not in local and n not in held)
    return uploads, deletes


@dataclass(frozen=True, slots=True)
class MirrorReport:
    """What one :meth:`ResultsMirror.sync` did."""

    uploaded: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResultsMirror:
    """``[run] results_uri``: each sealed local part also written to ``uri`` under its own name.

    One ``put_file`` per part, made after the local part is sealed: s3fs sends a single PUT (or, for
    a large file, a multipart upload completed at the end), gcsfs and adlfs one upload committed at
    the end, so a reader of the prefix sees a whole part or none. Each upload is recorded in the
    state (``meta``, :data:`MIRROR_META_KEY`): a rerun uploads only parts that are new or rewritten
    since, and deletes those a compaction merged away. Blocking: run it in a thread."""

    uri: str

    def target(self, name: str) -> str:
        return strip(self.uri).rstrip("/") + "/" + name

    def _recorded(self, state: MetaStore) -> dict[str, str]:
        found = state.get_meta(MIRROR_META_KEY)
        if not isinstance(found, dict) or found.get("uri") != self.uri:
            return {}  # another prefix (or none yet): everything goes there
        parts = found.get("parts")
        return dict(parts) if isinstance(parts, dict) else {}

    def sync(
        self, folder: Path, names: list[str], state: MetaStore, held: frozenset[str] = frozenset()
    ) -> MirrorReport:
        """Make the prefix hold the parts ``names`` (final, in ``folder``); raises
        :class:`StoreError` naming the part that could not be written or deleted."""
        uploaded = self._recorded(state)
        local = {n: part_signature(folder / n) for n in names if (folder / n).is_file()}
        uploads, deletes = plan_mirror(local, uploaded, held)
        if not uploads and not deletes:
            return MirrorReport()
        fs = filesystem(self.uri)

        def record() -> None:
            state.set_meta(MIRROR_META_KEY, {"uri": self.uri, "parts": dict(sorted(uploaded.items()))})

        # Deletes first, then uploads in part order, as the local sink does: a reader of the prefix
        # may briefly miss rows a compaction moved, never see a row twice (a rewritten part, which
        # drops rows a later part now holds, goes up before that later part). Recorded once at the
        # end, or at the failure: a part uploaded but not recorded (a crash) is only sent again.
        try:
            for name in deletes:
                try:
                    call(partial(fs.rm_file, self.target(name)))
                except FileNotFoundError:
                    pass  # gone already: what a delete wants
                except Exception as exc:
                    raise StoreError(
                        f"run.results_uri: cannot delete {name} from {self.uri}: {describe(exc)}"
                    ) from None
                del uploaded[name]
            for name in uploads:
                try:
                    call(partial(fs.put_file, str(folder / name), self.target(name)))
                except Exception as exc:
                    raise StoreError(
                        f"run.results_uri: cannot write {name} to {self.uri}: {describe(exc)}"
                    ) from None
                uploaded[name] = local[name]
        finally:
            record()
        return MirrorReport(tuple(uploads), tuple(deletes))
