"""Issue 13, defect 11 (and 5's download bounds): one rule for what a source is, which addresses a
download may reach, and downloads with a total deadline, a size cap and few redirects."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from batcher import urls
from batcher.api.download import Downloader, DownloadLimits
from batcher.images.errors import (
    BlockedAddress,
    DownloadError,
    DownloadTimeout,
    DownloadTooLarge,
    UnsupportedScheme,
)
from batcher.manifest import resolve_image
from tests.helpers import batcher, estimate_json, good_rows, results_by_id, write_job
from tests.image_server import jpeg_bytes, serve_images

LOOPBACK_OK = DownloadLimits(allow_private=True)


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("http://example.com/a.jpg", "url"),
        ("https://example.com/a.jpg", "url"),
        ("HTTP://EXAMPLE.COM/A.JPG", "url"),  # schemes are case-insensitive (RFC 3986)
        ("HtTpS://example.com/a.jpg", "url"),
        ("file:///srv/images/a.jpg", "unsupported"),
        ("FTP://example.com/a.jpg", "unsupported"),
        ("s3://bucket/key.jpg", "object"),  # an object store (batcher.stores, issue 18)
        ("GS://bucket/key.jpg", "object"),
        ("abfss://container@account/key.jpg", "object"),
        ("images/a.jpg", "local"),
        ("/srv/images/a.jpg", "local"),
        ("a:b.jpg", "local"),
        ("C://not-a-scheme.jpg", "local"),  # one letter: a drive, not a scheme
        ("images/http://x.jpg", "local"),  # a scheme only at the start
    ],
)
def test_a_source_is_a_url_an_object_a_path_or_an_unsupported_scheme(source: str, kind: str) -> None:
    assert urls.source_kind(source) == kind
    assert urls.is_url(source) == (kind == "url")


def test_the_refusal_names_the_scheme() -> None:
    message = urls.unsupported_scheme_message("FTP://host/a.jpg")
    assert message is not None and "'ftp'" in message
    assert urls.unsupported_scheme_message("https://host/a.jpg") is None
    assert urls.unsupported_scheme_message("a.jpg") is None


def test_the_manifest_keeps_every_scheme_as_written() -> None:
    # Before: "file:///x.jpg" was joined to the manifest's folder, a mangled path ("not_found").
    assert resolve_image("file:///srv/x.jpg", "/data") == "file:///srv/x.jpg"
    assert resolve_image("HTTP://host/x.jpg", "/data") == "HTTP://host/x.jpg"
    assert resolve_image("x.jpg", "/data") == "/data/x.jpg"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.8.9.10", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),  # IPv4-mapped: judged as the IPv4 address
        ("169.254.169.254", "a link-local address"),  # the cloud metadata endpoint
        ("fe80::1", "a link-local address"),
        ("10.1.2.3", "a private address"),
        ("172.16.5.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fd00::1", "a private address"),
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.251", "a multicast address"),
        ("100.64.0.1", "not a global address"),  # carrier-grade NAT
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_only_global_addresses_may_be_downloaded_from(address: str, kind: str | None) -> None:
    assert urls.refused_address(address, allow_private=False) == kind
    assert urls.refused_address(address, allow_private=True) is None


# --- the downloader, against a server on loopback ---------------------------------------------------


async def _fetch(url: str, limits: DownloadLimits = LOOPBACK_OK, **kw: object) -> bytes:
    async with Downloader(limits, **kw) as downloader:  # type: ignore[arg-type]
        return await downloader.fetch(url)


@pytest.mark.anyio
async def test_a_url_in_any_case_is_downloaded() -> None:
    with serve_images() as server:
        assert await _fetch(server.url.replace("http://", "HTTP://") + "/img.jpg") == jpeg_bytes()


@pytest.mark.anyio
async def test_loopback_is_refused_by_default_before_connecting() -> None:
    with serve_images() as server:
        with pytest.raises(BlockedAddress, match=r"127.0.0.1 is a loopback address.*allow_private_urls"):
            await _fetch(server.url + "/img.jpg", DownloadLimits())
        port = server.url.rsplit(":", 1)[1]
        with pytest.raises(BlockedAddress, match=r"localhost resolves to .*, a loopback address"):
            await _fetch(f"http://localhost:{port}/img.jpg", DownloadLimits())
        assert server.hits == []  # refused before a connection was made


@pytest.mark.anyio
async def test_a_redirect_is_checked_where_it_connects() -> None:
    # 127.0.0.1 stands for a public host, every other address for a private one: the URL is
    # allowed, its redirect to 127.0.0.2 (where nothing listens) is refused by the same check.
    def check(address: str) -> str | None:
        return None if address == "127.0.0.1" else "a private address"

    with serve_images() as server:
        port = server.url.rsplit(":", 1)[1]
        url = f"{server.url}/redirect?to=http://127.0.0.2:{port}/img.jpg"
        with pytest.raises(BlockedAddress, match=rf"redirect 1 to http://127.0.0.2:{port}: 127.0.0.2 is "):
            await _fetch(url, DownloadLimits(), check=check)
        # and a redirect to an allowed address is followed
        ok = f"{server.url}/redirect?to={server.url}/img.jpg"
        assert await _fetch(ok, DownloadLimits(), check=check) == jpeg_bytes()


@pytest.mark.anyio
async def test_a_redirect_to_another_scheme_is_refused_by_name() -> None:
    with serve_images() as server:
        with pytest.raises(UnsupportedScheme, match=r"redirect 1 to ftp://files.example: .*'ftp'"):
            await _fetch(f"{server.url}/redirect?to=ftp://files.example/a.jpg")
        with pytest.raises(UnsupportedScheme, match="'file'"):
            await _fetch(f"{server.url}/redirect?to=file:///etc/passwd")


@pytest.mark.anyio
async def test_redirects_are_limited() -> None:
    with serve_images() as server:
        url = f"{server.url}/img.jpg"
        for _ in range(urls.MAX_REDIRECTS):
            url = f"{server.url}/redirect?to={_quote(url)}"
        assert await _fetch(url) == jpeg_bytes()  # 5 redirects: followed
        server.hits.clear()
        with pytest.raises(DownloadError, match="more than 5 redirects"):
            await _fetch(f"{server.url}/redirect?to={_quote(url)}")
        assert len(server.hits) == 6  # the sixth redirect is not followed


def _quote(url: str) -> str:
    from urllib.parse import quote

    return quote(url, safe="")


@pytest.mark.anyio
async def test_a_slow_drip_is_cut_at_the_total_deadline() -> None:
    # One byte every 2 s never trips a per-read timeout: only a deadline on the whole download ends it.
    with serve_images() as server:
        started = time.monotonic()
        with pytest.raises(DownloadTimeout, match=r"not downloaded within 1.5 s"):
            await _fetch(server.url + "/drip", DownloadLimits(timeout_s=1.5, allow_private=True))
        assert time.monotonic() - started < 5


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/big", "/stream-big"])
async def test_a_download_over_the_cap_is_too_large(path: str) -> None:
    with serve_images() as server:
        with pytest.raises(DownloadTooLarge, match="download_max_bytes") as info:
            await _fetch(server.url + path, DownloadLimits(max_bytes=1024 * 1024, allow_private=True))
        assert info.value.error_type == "too_large"


@pytest.mark.anyio
async def test_http_errors_and_dead_hosts_are_download_errors() -> None:
    with serve_images() as server:
        with pytest.raises(DownloadError, match="HTTP 404") as info:
            await _fetch(server.url + "/status/404")
        assert info.value.error_type == "download_error"
    with pytest.raises(DownloadError, match="ConnectError"):
        await _fetch(server.url + "/img.jpg")  # the server is gone


@pytest.mark.anyio
async def test_a_cancelled_download_returns_at_once() -> None:
    with serve_images() as server:
        async with Downloader(LOOPBACK_OK) as downloader, anyio.create_task_group() as tg:
            tg.start_soon(downloader.fetch, server.url + "/drip")
            await anyio.to_thread.run_sync(server.got_request.wait, 5)
            started = time.monotonic()
            tg.cancel_scope.cancel()
        assert time.monotonic() - started < 1


# --- end to end: `batcher run` and `batcher estimate` ------------------------------------------------


def _with_images(job: Path, settings: str) -> Path:
    with job.open("a") as fh:
        fh.write(f"\n[images]\n{settings}\n")
    return job


def test_run_downloads_by_the_policy(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    # Before: "HTTP://" was read as a local path, and file:// or ftp:// gave not_found on a mangled path.
    local = (tmp_path / "local.jpg").resolve()
    local.write_bytes(jpeg_bytes())
    with serve_images() as server:
        up = server.url.replace("http://", "HTTP://")
        rows = [
            {"id": "upper", "image": f"{up}/img.jpg", "kind": "photo"},
            {"id": "file", "image": f"file://{local}", "kind": "photo"},
            {"id": "ftp", "image": "ftp://files.example/a.jpg", "kind": "photo"},
            {"id": "to-ftp", "image": f"{server.url}/redirect?to=ftp://files.example/a.jpg", "kind": "photo"},
            {"id": "slow", "image": f"{server.url}/drip", "kind": "photo"},
            {"id": "big", "image": f"{server.url}/stream-big", "kind": "photo"},
        ]
        job = _with_images(
            write_job(tmp_path, rows),
            "allow_private_urls = true\ndownload_timeout_s = 1.5\ndownload_max_bytes = 1048576",
        )
        done = batcher(job, simulator)
        assert done.returncode == 3, done.stderr
        got = results_by_id(tmp_path / "out")
        assert got["upper"]["status"] == "ok"
        assert {k: got[k]["error_type"] for k in ("file", "ftp", "to-ftp", "slow", "big")} == {
            "file": "unsupported_scheme",
            "ftp": "unsupported_scheme",
            "to-ftp": "unsupported_scheme",
            "slow": "download_timeout",
            "big": "too_large",
        }
        assert "'file'" in got["file"]["error_message"] and "'ftp'" in got["ftp"]["error_message"]
        assert "redirect 1 to ftp://files.example" in got["to-ftp"]["error_message"]
        assert str(tmp_path / "file:") not in got["file"]["error_message"]  # not a mangled path

        # The same server without allow_private_urls: refused before connecting.
        server.hits.clear()
        other = tmp_path / "private"
        other.mkdir()
        job = write_job(other, [{"id": "loop", "image": f"{server.url}/img.jpg", "kind": "photo"}])
        refused = batcher(job, simulator)
        assert refused.returncode == 3, refused.stderr
        row = results_by_id(other / "out")["loop"]
        assert row["error_type"] == "blocked_address" and "allow_private_urls" in row["error_message"]
        assert server.hits == []


def test_estimate_names_unsupported_schemes(tmp_path: Path) -> None:
    rows = [
        *good_rows(tmp_path, 1),
        {"id": "file", "image": "file:///srv/a.jpg", "kind": "photo"},
        {"id": "ftp", "image": "FTP://files.example/a.jpg", "kind": "photo"},
        {"id": "url", "image": "HTTPS://images.example/a.jpg", "kind": "photo"},
    ]
    job = write_job(tmp_path, rows)
    done = estimate_json(job)
    assert done.returncode == 0, done.stderr
    est = json.loads(done.stdout)
    assert est["failures"] == {"unsupported_scheme": 2}
    assert est["images_unsized"] == 1  # the https URL, in capitals, is a URL
