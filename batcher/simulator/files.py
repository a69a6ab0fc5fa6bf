"""The Files API: ``POST /v1/files``, ``GET /v1/files``, ``GET`` and ``DELETE /v1/files/{id}``.

Shapes follow the OpenAPI document's beta routes (``BetaFileMetadataSchema`` and friends) plus the
``expires_at`` field the current SDK reads. Rules the simulator enforces, as the API does:

- Every route passes the Files API's own rate budget (``Buckets.admit_files``) first, with or
  without ``anthropic-beta: files-api-2025-04-14``: the routes are beta in the OpenAPI document, but
  the API takes them without the header, which the current SDK (anthropic 2.16, the stable
  ``client.files``) no longer sends. On Bedrock and Vertex the Files API does not exist: every
  route is a 404 there.
- ``GET /v1/files/{id}/content``: uploaded files are not downloadable (``downloadable: false``;
  only files a tool made are), a 400 with ``details.error_code = "file_not_downloadable"``.
- An upload is one multipart part named ``file``, at most ``facts.FILE_MAX_BYTES`` (413 beyond),
  with an optional ``expires_in_seconds`` form field within
  ``facts.FILES_EXPIRES_MIN_S..FILES_EXPIRES_MAX_S``. ``mime_type`` comes from the bytes when they
  are an image the API knows, else from the part's content type or the file name. Only the last
  path component of the part's file name is kept; a missing one becomes ``unnamed`` plus an
  extension for the mime type (as the SDK documents).
- Unknown, deleted and expired ids are a 404 ``not_found_error`` everywhere, including as an image
  source in a messages body (:meth:`FileStore.image_bytes` answers None for them).
- Lists are newest first and paged like every list in the API (``limit`` 1..1000, default 20;
  ``after_id`` / ``before_id``, as the OpenAPI document has it), and also by the opaque ``page``
  cursor the current SDK follows (``next_page`` in each answer), or restricted to at most 100
  ``ids`` (one page, unknown and deleted ids left out). A cursor stays valid after its file is
  deleted, so a client can page through a list while deleting what it reads.

The files themselves, and their expiry, live in :mod:`batcher.simulator.filestore`.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
from typing import Final

import anyio.to_thread
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from batcher import facts
from batcher.simulator.core import Simulator
from batcher.simulator.errors import ApiError, invalid, not_found
from batcher.simulator.filestore import StoredFile
from batcher.simulator.wire import JSON, betas_of, cursors, page

#: Multipart framing around the file: headers, boundaries, the expiry field.
_MULTIPART_SLACK: Final = 64 * 1024
#: Above this many bytes, hashing runs on a worker thread so the event loop keeps serving.
_HASH_OFF_LOOP_BYTES: Final = 1024 * 1024
_MAX_FILENAME: Final = 500
#: Most ids one ``GET /v1/files?ids[]=...`` may name.
_MAX_IDS: Final = 100
_GENERIC_TYPES: Final = frozenset({"", "application/octet-stream"})


# --- pure decisions about an upload ----------------------------------------------------------------


def parse_expiry(raw: object) -> int | None:
    """The ``expires_in_seconds`` form field: None when absent, else an int within the API's bounds."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise invalid("expires_in_seconds", "Input should be a valid integer")
    try:
        seconds = int(raw.strip())
    except ValueError:
        raise invalid("expires_in_seconds", "Input should be a valid integer") from None
    lo, hi = facts.FILES_EXPIRES_MIN_S, facts.FILES_EXPIRES_MAX_S
    if not lo <= seconds <= hi:
        raise invalid("expires_in_seconds", f"Input should be between {lo} and {hi}")
    return seconds


def mime_type_of(data: bytes, declared: str | None, filename: str) -> str:
    """What the API records as a file's type: the bytes' own image type first."""
    sniffed = facts.sniff_media_type(data[:16])
    if sniffed is not None:
        return sniffed
    declared = (declared or "").split(";")[0].strip().lower()
    if declared not in _GENERIC_TYPES:
        return declared
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


def clean_filename(raw: str | None, mime_type: str) -> str:
    """The last path component of the part's file name, or ``unnamed`` + an extension."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name:
        name = "unnamed" + (mimetypes.guess_extension(mime_type) or "")
    if len(name) > _MAX_FILENAME:
        raise invalid("file.filename", f"String should have at most {_MAX_FILENAME} characters")
    return name


# --- the routes --------------------------------------------------------------------------------------


def _enter(request: Request, sim: Simulator) -> None:
    """What every Files route checks first: the platform has it, the budget, and any
    ``anthropic-beta`` values are known ones (the Files beta itself is optional)."""
    if sim.config.platform != "anthropic":
        raise not_found(
            f"{request.method} {request.url.path}: the Files API is not available on {sim.config.platform}"
        )
    sim.buckets.admit_files()
    betas_of(request)


def _too_large() -> ApiError:
    return ApiError(413, f"File exceeds the maximum size of {facts.FILE_MAX_BYTES} bytes.")


async def _read_part(request: Request) -> tuple[bytes, str | None, str | None, UploadFile | str | None]:
    """The uploaded bytes, the part's file name and content type, and the raw expiry field."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > facts.FILE_MAX_BYTES + _MULTIPART_SLACK:
        raise _too_large()
    try:
        async with request.form(max_files=1, max_fields=8) as form:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise invalid("file", "Field required (a multipart file part named `file`)")
            if part.size is not None and part.size > facts.FILE_MAX_BYTES:
                raise _too_large()
            data = await part.read()
            return data, part.filename, part.content_type, form.get("expires_in_seconds")
    except HTTPException as exc:  # malformed multipart: starlette's own 400
        raise invalid("file", str(exc.detail)) from None


async def upload(request: Request, sim: Simulator) -> Response:
    """POST /v1/files."""
    _enter(request, sim)
    data, raw_name, declared, raw_expiry = await _read_part(request)
    if len(data) > facts.FILE_MAX_BYTES:
        raise _too_large()
    expires_in_s = parse_expiry(raw_expiry)
    mime_type = mime_type_of(data, declared, raw_name or "")
    filename = clean_filename(raw_name, mime_type)
    if len(data) > _HASH_OFF_LOOP_BYTES:
        digest = await anyio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
    else:
        digest = hashlib.sha256(data).hexdigest()
    stored = sim.files.add(data, filename, mime_type, expires_in_s)
    sim.ledger.uploaded(digest)
    return JSON(stored.metadata())


async def list_files(request: Request, sim: Simulator) -> Response:
    """GET /v1/files: newest first, paged by ``after_id`` / ``before_id`` (the OpenAPI document) or
    by the opaque ``page`` / ``next_page`` cursor (the current SDK), or restricted to ``ids``."""
    _enter(request, sim)
    query = request.query_params
    wanted = requested_ids([*query.getlist("ids[]"), *query.getlist("ids")])
    if wanted is not None:
        if "page" in query or "limit" in query:
            raise invalid("ids", "ids cannot be combined with page or limit")
        data = [f.metadata() for f in sim.files.live() if f.id in wanted]
        return JSON(
            {
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
                "next_page": None,
            }
        )
    limit, after, before = cursors(request, sim.files.seq_of)
    if query.get("page"):
        if after is not None or before is not None:
            raise invalid("page", "page cannot be combined with after_id or before_id")
        after = parse_page_token(query["page"])
    files = sim.files.live()
    answer = page([(f.seq, f.metadata()) for f in files], limit, after, before)
    forward = before is None and answer["has_more"] and answer["last_id"] is not None
    answer["next_page"] = page_token(sim.files.seq_of(answer["last_id"]) or 0) if forward else None
    return JSON(answer)


def requested_ids(values: list[str]) -> frozenset[str] | None:
    """The ``ids`` filter (``ids[]=a&ids[]=b``, repeated or comma lists): None when absent."""
    ids = frozenset(part.strip() for v in values for part in v.split(",") if part.strip())
    if not values:
        return None
    if len(ids) > _MAX_IDS:
        raise invalid("ids", f"List should have at most {_MAX_IDS} items after validation, not {len(ids)}")
    return ids


def page_token(seq: int) -> str:
    """The opaque ``next_page`` cursor: the files after (older than) sequence number ``seq``."""
    return "page_" + base64.urlsafe_b64encode(f"after:{seq}".encode()).decode().rstrip("=")


def parse_page_token(token: str) -> int:
    """The sequence number inside a ``page`` cursor; 400 for one this simulator did not issue."""
    try:
        if not token.startswith("page_"):
            raise ValueError(token)
        raw = token[5:]
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        kind, _, seq = decoded.partition(":")
        if kind != "after":
            raise ValueError(token)
        return int(seq)
    except (ValueError, UnicodeDecodeError):
        raise invalid("page", f"invalid page cursor {token!r}") from None


def _live_or_404(request: Request, sim: Simulator) -> StoredFile:
    file_id = request.path_params["file_id"]
    stored = sim.files.get(file_id)
    if stored is None:
        raise not_found(f"File not found: {file_id}")
    return stored


async def get_file(request: Request, sim: Simulator) -> Response:
    """GET /v1/files/{file_id}: the file's metadata."""
    _enter(request, sim)
    return JSON(_live_or_404(request, sim).metadata())


async def delete_file(request: Request, sim: Simulator) -> Response:
    """DELETE /v1/files/{file_id}."""
    _enter(request, sim)
    stored = _live_or_404(request, sim)
    sim.files.delete(stored.id)
    return JSON({"id": stored.id, "type": "file_deleted"})


async def download_file(request: Request, sim: Simulator) -> Response:
    """GET /v1/files/{file_id}/content: every file here was uploaded, and uploads are not
    downloadable (only files a tool made are), as the API answers."""
    _enter(request, sim)
    stored = _live_or_404(request, sim)
    raise ApiError(
        400,
        f"File {stored.id} is not downloadable: only files created by a tool can be downloaded",
        details={"error_code": "file_not_downloadable"},
    )
