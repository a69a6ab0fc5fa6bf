"""The one seam between batcher and the network: a small async client over one httpx pool.

It sends one request and answers a parsed JSON body or raises from :mod:`batcher.api.errors`;
it never retries (retry policy and rate limits are decisions, made in :mod:`batcher.retry` and
:mod:`batcher.ratelimit`). The API key lives only in the client's default headers: it is never
logged, printed or written anywhere.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from batcher import facts
from batcher.api import errors
from batcher.api.download import Downloader, DownloadLimits


class MissingKeyError(errors.APIError):
    fatal = True
    error_type = "no_api_key"


class InvalidKeyError(MissingKeyError):
    """The key holds characters no API key has (a newline, a space, a non-ASCII letter...)."""

    error_type = "invalid_api_key"


#: An API key is printable ASCII without whitespace (as HTTP header values must be, without folding).
_KEY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))
_CHAR_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", " ": "a space"}


def bad_key_char(key: str) -> tuple[str, int] | None:
    """The first character of ``key`` that no API key has, as (what it is, its 1-based position):
    named by kind and code point, never shown. None when every character may be sent."""
    for position, char in enumerate(key, start=1):
        if char in _KEY_CHARS:
            continue
        if char in _CHAR_NAMES:
            return _CHAR_NAMES[char], position
        if char.isspace():
            kind = "whitespace"
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            kind = "control"
        else:
            kind = "non-ASCII"
        return f"a {kind} character (U+{ord(char):04X})", position
    return None


def check_key(key: str, name: str = "the API key", offset: int = 0) -> None:
    """Raise :class:`InvalidKeyError` naming what is wrong (never the key) if ``key`` cannot be sent;
    ``offset`` is added to the position (characters stripped before the key)."""
    bad = bad_key_char(key)
    if bad is not None:
        what, position = bad
        raise InvalidKeyError(
            f"{name} contains {what} (character {position + offset}); an API key is "
            "printable ASCII without spaces or line breaks: check how it was set"
        )


@dataclass(frozen=True, slots=True)
class APIResponse:
    status: int
    body: Any
    headers: Mapping[str, str]
    request_id: str | None
    elapsed_s: float


def settings_from_env(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(api key, base URL) as the official SDK reads them: ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL."""
    env = os.environ if env is None else env
    raw = env.get("ANTHROPIC_API_KEY", "")
    key = raw.strip()
    if not key:
        raise MissingKeyError(
            "no API key: set ANTHROPIC_API_KEY (or run `batcher demo` to try the simulator)"
        )
    # Positions count in the variable as set, whitespace stripped at its start included.
    check_key(key, "ANTHROPIC_API_KEY", offset=len(raw) - len(raw.lstrip()))
    return key, env.get("ANTHROPIC_BASE_URL", "").strip() or facts.DEFAULT_BASE_URL


#: Connections a shard of the pool may open per request it may carry (see ``Client._pool``).
POOL_HEADROOM = 2
#: Requests in flight one shard of the pool carries at most (see ``Client.__init__``).
SHARD_CONNECTIONS = 8


class Client:
    """``async with Client(key, base_url, max_connections=n) as client: await client.messages(body)``."""

    def __init__(
        self,
        api_key: str,
        base_url: str = facts.DEFAULT_BASE_URL,
        *,
        max_connections: int = 32,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise MissingKeyError("no API key")
        # Before any header is built: httpx would echo a bad key in its error, or fail on non-ASCII.
        check_key(api_key)
        # The pool is split into shards of at most SHARD_CONNECTIONS: httpcore's pool does work
        # in proportion to its connections on every request (encode/httpcore#1035,
        # pydantic/httpx2#974), which at 64 connections cost more than the request itself.
        # A request takes the least busy shard, so a small job uses one shard and few sockets.
        shards = max(1, math.ceil(max_connections / SHARD_CONNECTIONS))
        per_shard = math.ceil(max_connections / shards)
        self._pools = [
            self._pool(api_key, base_url, per_shard, timeout_s, connect_timeout_s, transport)
            for _ in range(shards)
        ]
        self._busy = [0] * shards
        self._downloaders: dict[DownloadLimits, Downloader] = {}

    @staticmethod
    def _pool(
        api_key: str,
        base_url: str,
        connections: int,
        timeout_s: float,
        connect_timeout_s: float,
        transport: httpx.AsyncBaseTransport | None,
    ) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"x-api-key": api_key, "anthropic-version": facts.API_VERSION, "user-agent": "batcher"},
            # Requests in flight on a shard never exceed ``connections``, but a connection stays
            # busy a moment after its answer is read; with no spare, requests queue inside the
            # pool, whose queue hands a freed connection to every waiter (pydantic/httpx2#1075).
            limits=httpx.Limits(
                max_connections=POOL_HEADROOM * connections,
                max_keepalive_connections=POOL_HEADROOM * connections,
            ),
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            transport=transport,
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
        for downloader in self._downloaders.values():
            await downloader.aclose()

    async def fetch(self, url: str, limits: DownloadLimits | None = None) -> bytes:
        """Download an image named by URL (for jobs that send bytes, not URLs) within ``limits``
        (see :mod:`batcher.api.download`); raises its ``DownloadError`` types.

        A separate connection pool without the API key: the key goes to the API and nowhere else.
        """
        limits = limits or DownloadLimits()
        downloader = self._downloaders.get(limits)
        if downloader is None:
            downloader = self._downloaders[limits] = Downloader(limits)
        return await downloader.fetch(url)

    # --- the seam -------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        betas: Iterable[str] = (),
        params: Mapping[str, Any] | None = None,
        files: Any = None,
        data: Mapping[str, Any] | None = None,
        raw: bool = False,
    ) -> APIResponse:
        headers = {"anthropic-beta": ",".join(betas)} if betas else {}
        content = None
        if json is not None:
            content = orjson.dumps(json)
            headers["content-type"] = "application/json"
        started = time.monotonic()
        shard = self._busy.index(min(self._busy))
        self._busy[shard] += 1
        try:
            resp = await self._pools[shard].request(
                method, path, content=content, headers=headers, params=params, files=files, data=data
            )
        except httpx.TimeoutException as exc:
            raise errors.APITimeoutError(f"{method} {path}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise errors.APIConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        finally:
            self._busy[shard] -= 1
        elapsed = time.monotonic() - started
        body: Any = resp.content if raw and resp.is_success else _parse(resp)
        if not resp.is_success:
            raise errors.from_response(resp.status_code, body, resp.headers)
        if body is _UNPARSEABLE:
            raise errors.APIResponseError(f"{method} {path}: answer {resp.status_code} is not JSON")
        return APIResponse(resp.status_code, body, resp.headers, resp.headers.get("request-id"), elapsed)

    # --- endpoints ------------------------------------------------------------------------

    async def messages(self, body: Mapping[str, Any], betas: Iterable[str] = ()) -> APIResponse:
        return await self.request("POST", "/v1/messages", json=body, betas=betas)

    async def count_tokens(self, body: Mapping[str, Any], betas: Iterable[str] = ()) -> int:
        resp = await self.request("POST", "/v1/messages/count_tokens", json=body, betas=betas)
        return int(resp.body["input_tokens"])

    async def get_model(self, model_id: str) -> dict[str, Any]:
        return (await self.request("GET", f"/v1/models/{model_id}")).body  # type: ignore[no-any-return]

    async def upload_file(
        self, data: bytes, filename: str, media_type: str, *, beta: str, expires_in_seconds: int | None = None
    ) -> dict[str, Any]:
        form = {"expires_in_seconds": str(expires_in_seconds)} if expires_in_seconds else None
        resp = await self.request(
            "POST", "/v1/files", betas=[beta], files={"file": (filename, data, media_type)}, data=form
        )
        return resp.body  # type: ignore[no-any-return]

    async def delete_file(self, file_id: str, *, beta: str) -> None:
        await self.request("DELETE", f"/v1/files/{file_id}", betas=[beta])

    async def list_files(self, *, beta: str, limit: int = 1000) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": limit}
        while True:
            page = (await self.request("GET", "/v1/files", betas=[beta], params=params)).body
            out.extend(page.get("data", []))
            if not page.get("has_more") or not page.get("last_id"):
                return out
            params["after_id"] = page["last_id"]

    async def create_batch(self, requests: list[dict[str, Any]], betas: Iterable[str] = ()) -> dict[str, Any]:
        resp = await self.request("POST", "/v1/messages/batches", json={"requests": requests}, betas=betas)
        return resp.body  # type: ignore[no-any-return]

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        return (await self.request("GET", f"/v1/messages/batches/{batch_id}")).body  # type: ignore[no-any-return]

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return (await self.request("POST", f"/v1/messages/batches/{batch_id}/cancel")).body  # type: ignore[no-any-return]

    async def batch_results(self, batch_id: str) -> list[dict[str, Any]]:
        resp = await self.request("GET", f"/v1/messages/batches/{batch_id}/results", raw=True)
        raw: bytes = resp.body
        return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


_UNPARSEABLE = object()


def _parse(resp: httpx.Response) -> Any:
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return resp.text if not resp.is_success else _UNPARSEABLE
