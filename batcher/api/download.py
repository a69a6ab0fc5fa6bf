"""Image downloads for jobs that send bytes: a total deadline, a size cap, few redirects, and only
the addresses :mod:`batcher.urls` allows.

A :class:`Downloader` speaks HTTP/1.1 through httpcore, with a network backend that resolves each
host itself, refuses it if any of its addresses is refused (``blocked_address``), and then connects to
exactly those addresses: the address checked is the address connected to, at connect time, for the
URL and for every redirect, so DNS rebinding (a public answer when checked, a private one when
connected) has no second lookup to exploit. TLS still verifies the certificate against the host name
(httpcore sends the name, not the address, as SNI).

Proxies from the environment (``HTTP(S)_PROXY``) are not used: through a proxy the address policy
could not be enforced. Nothing here carries the API key.

Failures are :mod:`batcher.images.errors` types, a failure of the row that needed the image:
``download_timeout`` (the whole download, redirects included, past ``timeout_s``), ``too_large``
(over ``max_bytes``, by Content-Length before reading or while reading), ``unsupported_scheme``
(a redirect to ``ftp://``...), ``blocked_address`` and ``download_error`` (HTTP errors, refused or cut
connections, too many redirects). Messages name the host of a redirect, never the whole URL (signed
URLs carry credentials in their query).
"""

from __future__ import annotations

import socket
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import anyio
import httpcore
import httpx

from batcher import urls
from batcher.images.errors import (
    BlockedAddress,
    DownloadError,
    DownloadTimeout,
    DownloadTooLarge,
    UnsupportedScheme,
)

#: ``check(address) -> kind``: what an IP address is when a download may not connect to it, or None.
AddressCheck = Callable[[str], str | None]

_HEADERS = [
    (b"Accept", b"image/*, */*;q=0.5"),
    (b"Accept-Encoding", b"identity"),
    (b"User-Agent", b"batcher"),
]


@dataclass(frozen=True, slots=True)
class DownloadLimits:
    """``[images] download_timeout_s``, ``download_max_bytes`` and ``allow_private_urls``."""

    timeout_s: float = 60.0
    max_bytes: int = 100 * 1024 * 1024
    allow_private: bool = False
    max_redirects: int = urls.MAX_REDIRECTS


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own anyio backend, behind the address check (see the module docstring)."""

    def __init__(self, check: AddressCheck) -> None:
        self._check = check
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await _resolve(host, port)
        for address in addresses:
            kind = self._check(address)
            if kind is not None:
                said = (
                    f"{address} is {kind}"
                    if address == host.strip("[]")
                    else f"{host} resolves to {address}, {kind}"
                )
                raise BlockedAddress(f"{said}: refused unless [images] allow_private_urls = true")
        failure: Exception | None = None
        for address in addresses:  # in the resolver's order, as a browser would try them
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[typing.Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("image downloads do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, without duplicates, in the resolver's order."""
    try:
        infos = await anyio.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DownloadError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    return list(dict.fromkeys(addresses))


class Downloader:
    """Download image URLs within :class:`DownloadLimits`; ``async with`` or :meth:`aclose` ends it.

    ``check`` decides which addresses may be connected to (default: :func:`batcher.urls.refused_address`
    under the limits' ``allow_private``).
    """

    def __init__(self, limits: DownloadLimits, check: AddressCheck | None = None) -> None:
        self.limits = limits
        if check is None:
            check = partial(urls.refused_address, allow_private=limits.allow_private)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=None,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(check),
        )

    async def __aenter__(self) -> Downloader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def fetch(self, url: str) -> bytes:
        """The body of ``url`` (a 200 answer, after at most ``max_redirects`` redirects)."""
        limits = self.limits
        try:
            with anyio.fail_after(limits.timeout_s):
                return await self._follow(url)
        except (TimeoutError, httpcore.TimeoutException):
            raise DownloadTimeout(
                f"not downloaded within {limits.timeout_s:g} s ([images] download_timeout_s)"
            ) from None

    async def _follow(self, url: str) -> bytes:
        current, where = url, ""
        for hop in range(self.limits.max_redirects + 1):
            try:
                got = await self._get(_target(current))
            except (UnsupportedScheme, DownloadError) as exc:
                if not where:
                    raise
                # Named for the hop that failed: the row names the URL it started from.
                raise type(exc)(f"{where}{exc}") from None
            if isinstance(got, bytes):
                return got
            current, where = got, f"redirect {hop + 1} to {_origin(got)}: "
        raise DownloadError(f"more than {self.limits.max_redirects} redirects")

    async def _get(self, target: httpx.URL) -> bytes | str:
        """One request: the body of a 200, or the URL a redirect leads to."""
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self.limits.timeout_s)
        try:
            async with self._pool.stream(
                "GET", _core_url(target), headers=_HEADERS, extensions={"timeout": timeouts}
            ) as resp:
                if resp.status in urls.REDIRECTS:
                    location = _header(resp.headers, b"location")
                    if not location:
                        raise DownloadError(f"HTTP {resp.status} redirect without a Location")
                    try:
                        return str(target.join(location))
                    except httpx.InvalidURL as exc:
                        raise DownloadError(f"HTTP {resp.status} to an invalid URL: {exc}") from None
                if resp.status != 200:
                    raise DownloadError(f"HTTP {resp.status}")
                return await _read(resp, self.limits.max_bytes)
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            raise DownloadError(f"{type(exc).__name__}: {exc}") from None


def _target(url: str) -> httpx.URL:
    """``url`` parsed, if it is one batcher downloads (an unsupported scheme is named)."""
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise DownloadError(f"not a valid URL: {exc}") from None
    if target.scheme not in urls.SCHEMES:
        raise UnsupportedScheme(urls.scheme_refusal(target.scheme or "none"))
    if not target.host:
        raise DownloadError("the URL names no host")
    return target


def _core_url(url: httpx.URL) -> httpcore.URL:
    return httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path)


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of a redirect target, for messages (never its path or query)."""
    try:
        parsed = httpx.URL(url)
        return f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"
    except (httpx.InvalidURL, UnicodeDecodeError):
        return "an invalid URL"


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _read(resp: httpcore.Response, max_bytes: int) -> bytes:
    length = _header(resp.headers, b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise DownloadTooLarge(
            f"{int(length):,} bytes, over the {max_bytes:,}-byte limit ([images] download_max_bytes)"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_stream():
        size += len(chunk)
        if size > max_bytes:
            raise DownloadTooLarge(f"more than {max_bytes:,} bytes ([images] download_max_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)
