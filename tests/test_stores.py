"""batcher.stores (issue 18): which URIs are object stores, what a store's error means for a row,
bounded reads with retries; then reads against moto's S3 server on loopback."""

from __future__ import annotations

import csv
import errno
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from batcher import stores, urls
from batcher.errors import ROW_ERROR_TYPES
from batcher.images.errors import (
    DownloadError,
    DownloadTooLarge,
    NotAFile,
    NotFound,
    PermissionDenied,
)
from batcher.manifest import ManifestError, open_manifest, resolve_image
from tests.helpers import Bucket

# --- pure decisions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "store"),
    [
        ("s3://b/k.jpg", "s3"),
        ("S3://b/k.jpg", "s3"),
        ("gs://b/k.jpg", "gcs"),
        ("gcs://b/k.jpg", "gcs"),
        ("az://c/k.jpg", "azure"),
        ("abfs://c/k.jpg", "azure"),
        ("abfss://c@acct.dfs.core.windows.net/k.jpg", "azure"),
        ("https://host/k.jpg", None),
        ("ftp://host/k.jpg", None),
        ("images/k.jpg", None),
    ],
)
def test_each_object_scheme_names_its_store(uri: str, store: str | None) -> None:
    assert stores.store_of(uri) == store
    assert urls.is_object(uri) == (store is not None)
    assert urls.is_remote(uri) == (store is not None or uri.startswith("https"))
    assert urls.unsupported_scheme_message(uri) is None or uri.startswith("ftp")


def test_a_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert stores.missing_extra("s3") == 's3://, s3a:// URIs need s3fs: pip install "batcher[s3]"'
    assert "batcher[gcs]" in stores.missing_extra("gcs") and "gcsfs" in stores.missing_extra("gcs")
    assert "batcher[azure]" in stores.missing_extra("azure") and "adlfs" in stores.missing_extra("azure")
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed: its import fails
    stores.reset_filesystems()
    with pytest.raises(stores.StoreError) as caught:
        stores.filesystem("gs://bucket/a.jpg")
    assert str(caught.value) == stores.missing_extra("gcs") and caught.value.exit_code == 2


class _Status(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code


class EndpointConnectionError(Exception):
    """Named as botocore's: transient by name, without importing botocore."""


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (FileNotFoundError("bucket/key"), "not_found"),
        (PermissionError("Access Denied"), "permission_denied"),
        (OSError(errno.EBUSY, "SlowDown"), "transient"),
        (OSError(getattr(errno, "EREMOTEIO", errno.EIO), "InternalError"), "transient"),
        (TimeoutError("RequestTimeout"), "transient"),
        (ConnectionResetError("reset by peer"), "transient"),
        (EndpointConnectionError("could not connect"), "transient"),
        (_Status(404), "not_found"),
        (_Status(403), "permission_denied"),
        (_Status(429), "transient"),
        (_Status(503), "transient"),
        (_Status(400), "error"),
        (OSError(errno.EINVAL, "InvalidRange"), "error"),
        (ValueError("odd"), "error"),
    ],
)
def test_a_store_error_is_classified(exc: BaseException, kind: str) -> None:
    assert stores.classify(exc) == kind
    assert stores.is_transient(exc) == (kind == "transient")


def test_missing_and_forbidden_objects_are_the_rows_image_errors() -> None:
    assert isinstance(stores.image_error(FileNotFoundError("b/k")), NotFound)
    denied = stores.image_error(PermissionError("Access Denied"))
    assert isinstance(denied, PermissionDenied) and "Access Denied" in str(denied)
    assert isinstance(stores.image_error(OSError(errno.EBUSY, "SlowDown")), DownloadError)
    assert ROW_ERROR_TYPES["not_found"] == ROW_ERROR_TYPES["permission_denied"] == "image"


def test_the_size_cap_is_checked_before_download() -> None:
    assert stores.too_large(100, 100) is None
    message = stores.too_large(101, 100)
    assert message is not None and "download_max_bytes" in message
    assert stores.object_size({"type": "file", "size": 12}) == 12
    assert stores.object_size({"type": "directory", "size": 0}) is None


def test_transient_errors_are_retried_a_bounded_number_of_times() -> None:
    calls: list[int] = []
    waits: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.EBUSY, "SlowDown")
        return "ok"

    controller = stores.retrying(sleep=waits.append)
    for attempt in controller:
        with attempt:
            got = flaky()
    assert got == "ok" and len(calls) == 3 and len(waits) == 2

    calls.clear()
    with pytest.raises(OSError):  # throttled every time: gives up after ATTEMPTS calls
        for attempt in stores.retrying(sleep=waits.append):
            with attempt:
                calls.append(1)
                raise OSError(errno.EBUSY, "SlowDown")
    assert len(calls) == stores.ATTEMPTS

    calls.clear()
    with pytest.raises(FileNotFoundError):  # not transient: raised at once
        for attempt in stores.retrying(sleep=waits.append):
            with attempt:
                calls.append(1)
                raise FileNotFoundError("b/k")
    assert len(calls) == 1


def test_a_bucket_manifest_resolves_relative_images_in_its_folder() -> None:
    base = "s3://bucket/data"
    assert resolve_image("a.jpg", base) == "s3://bucket/data/a.jpg"
    assert resolve_image("img/a.jpg", base) == "s3://bucket/data/img/a.jpg"
    assert resolve_image("./a.jpg", base) == "s3://bucket/data/a.jpg"
    assert resolve_image("../other/a.jpg", base) == "s3://bucket/other/a.jpg"
    assert resolve_image("../../../a.jpg", base) == "s3://bucket/a.jpg"  # never above the bucket
    assert resolve_image("gs://elsewhere/a.jpg", base) == "gs://elsewhere/a.jpg"
    assert resolve_image("https://host/a.jpg", base) == "https://host/a.jpg"
    assert resolve_image("/srv/a.jpg", base) == "/srv/a.jpg"
    assert resolve_image("a.jpg", "s3://bucket") == "s3://bucket/a.jpg"


# --- against moto's S3 server ----------------------------------------------------------------------


def test_an_object_is_read_in_one_ranged_get(s3: Bucket) -> None:
    uri = s3.put("data/a.bin", b"x" * 1000)
    assert stores.read_object(uri, max_bytes=1000) == b"x" * 1000
    assert stores.read_object(s3.put("data/empty", b""), max_bytes=10) == b""


def test_store_failures_are_the_rows(s3: Bucket) -> None:
    uri = s3.put("data/a.bin", b"x" * 1000)
    with pytest.raises(DownloadTooLarge, match="download_max_bytes"):
        stores.read_object(uri, max_bytes=999)
    with pytest.raises(NotFound):
        stores.read_object(s3.uri("data/nope.jpg"), max_bytes=10)
    with pytest.raises(NotFound):
        stores.read_object("s3://no-such-bucket-here/a.jpg", max_bytes=10)
    with pytest.raises(NotAFile):
        stores.read_object(s3.uri("data"), max_bytes=10)


def test_a_forbidden_object_is_permission_denied(s3: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = s3.put("data/a.bin", b"x")

    def denied(*_args: Any, **_kwargs: Any) -> Any:
        raise PermissionError("Access Denied")  # what s3fs makes of a 403 AccessDenied

    monkeypatch.setattr(stores.filesystem("s3"), "info", denied)
    with pytest.raises(PermissionDenied, match="Access Denied"):
        stores.read_object(uri, max_bytes=10)


@pytest.mark.anyio
async def test_fetch_object_reads_off_the_event_loop(s3: Bucket) -> None:
    uri = s3.put("a.bin", b"abc")
    assert await stores.fetch_object(uri, 10, timeout_s=30) == b"abc"
    with pytest.raises(NotFound):
        await stores.fetch_object(s3.uri("missing"), 10, timeout_s=30)
    # Cancelled (the run stops): abandoned at once, not waited for.
    with anyio.move_on_after(0) as scope:
        await stores.fetch_object(uri, 10, timeout_s=30)
    assert scope.cancelled_caught


def test_one_filesystem_per_store_is_reused(s3: Bucket) -> None:
    assert stores.filesystem("s3://a/b") is stores.filesystem("s3") is stores.filesystem("s3a://c/d")


# --- a manifest in a bucket ----------------------------------------------------------------------


def _manifests(tmp: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"r{i}", "image": f"img/{i}.jpg", "kind": 'photo, "quoted"'} for i in range(50)]
    rows.append({"id": "abs", "image": "https://host/x.jpg", "kind": "photo"})
    csv_path = tmp / "m.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "kind"])
        writer.writeheader()
        writer.writerows(rows)
    jsonl = tmp / "m.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=7)
    return {"csv": csv_path, "jsonl": jsonl, "parquet": parquet}


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_manifest_in_a_bucket_reads_as_the_same_file_would(s3: Bucket, tmp_path: Path, fmt: str) -> None:
    local = _manifests(tmp_path)[fmt]
    uri = s3.put(f"data/{local.name}", local)
    opts: dict[str, Any] = {
        "id_column": "id",
        "image_column": "image",
        "prompt_column": None,
        "prompt_template": "Say {kind}",
    }
    there = open_manifest(uri, **opts)
    here = open_manifest(local, **opts)
    there.check()
    assert there.columns == here.columns and there.field_types() == here.field_types()
    got, want = list(there.rows()), list(here.rows())
    assert [(r.id, r.prompt) for r in got] == [(r.id, r.prompt) for r in want]
    assert got[0].images == [s3.uri("data/img/0.jpg")]  # relative to the manifest's folder there
    assert got[-1].images == ["https://host/x.jpg"]


def test_a_missing_manifest_in_a_bucket_is_one_clear_error(s3: Bucket) -> None:
    manifest = open_manifest(
        s3.uri("data/nope.csv"), id_column="id", image_column="image", prompt_column=None, prompt_template="x"
    )
    with pytest.raises(ManifestError, match="does not exist"):
        manifest.check()


def test_a_bucket_manifests_fingerprint_is_its_metadata(s3: Bucket, tmp_path: Path) -> None:
    from batcher.config import load_job
    from batcher.resume import manifest_fingerprint
    from batcher.stores import ObjectPath

    uri = s3.put("data/m.jsonl", b'{"id": "a", "image": "a.jpg"}\n')
    job_file = tmp_path / "job.toml"
    job_file.write_text(
        f'[input]\nmanifest = "{uri}"\nprompt = "x"\n[request]\nmodel = "claude-haiku-5-5"\nmax_tokens = 10\n'
    )
    job = load_job(job_file)
    assert job.manifest_path == uri
    first = manifest_fingerprint(job, ObjectPath(uri))
    assert manifest_fingerprint(job, ObjectPath(uri)) == first
    assert '"etag"' in first and "mtime" in first
    s3.put("data/m.jsonl", b'{"id": "b", "image": "b.jpg"}\n')
    assert manifest_fingerprint(job, ObjectPath(uri)) != first


# --- results_uri ---------------------------------------------------------------------------------


def test_the_mirror_plan_uploads_new_and_rewritten_parts_and_deletes_merged_ones() -> None:
    uploaded = {"part-00001.parquet": "10:1:1", "part-00002.parquet": "10:1:2", "part-00003.parquet": "9:1:3"}
    local = {"part-00002.parquet": "12:5:9", "part-00003.parquet": "9:1:3", "part-00004.parquet": "20:1:4"}
    assert stores.plan_mirror(local, uploaded) == (
        ["part-00002.parquet", "part-00004.parquet"],
        ["part-00001.parquet"],
    )
    assert stores.plan_mirror(local, {**local}) == ([], [])
    # A dirty or pending part is about to change: neither uploaded nor deleted.
    held = frozenset({"part-00001.parquet", "part-00004.parquet"})
    assert stores.plan_mirror(local, uploaded, held) == (["part-00002.parquet"], [])


class _Meta:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get_meta(self, key: str, default: Any = None) -> Any:
        return json.loads(json.dumps(self.values.get(key, default)))

    def set_meta(self, key: str, value: object) -> None:
        self.values[key] = value


def test_parts_are_mirrored_once_and_follow_rewrites_and_merges(s3: Bucket, tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    for n in (1, 2):
        (folder / f"part-0000{n}.parquet").write_bytes(b"part %d" % n)
    mirror = stores.ResultsMirror(s3.uri("out/results/"))
    meta = _Meta()
    names = ["part-00001.parquet", "part-00002.parquet"]

    report = mirror.sync(folder, names, meta)
    assert report.uploaded == tuple(names) and not report.deleted
    assert s3.keys("out/results") == [f"out/results/{n}" for n in names]
    assert mirror.sync(folder, names, meta) == stores.MirrorReport()  # nothing new: nothing sent

    # part 2 rewritten in place (a new file renamed over it), parts 1 and 2 merged into 3 later
    (folder / "part-00002.parquet.new").write_bytes(b"part 2, fewer rows")
    (folder / "part-00002.parquet.new").replace(folder / "part-00002.parquet")
    assert mirror.sync(folder, names, meta).uploaded == ("part-00002.parquet",)
    assert s3.fs.cat_file(f"{s3.name}/out/results/part-00002.parquet") == b"part 2, fewer rows"
    (folder / "part-00003.parquet").write_bytes(b"merged")
    for n in names:
        (folder / n).unlink()
    report = mirror.sync(folder, ["part-00003.parquet"], meta)
    assert report == stores.MirrorReport(("part-00003.parquet",), tuple(names))
    assert s3.keys("out/results") == ["out/results/part-00003.parquet"]

    # Another prefix: everything goes there.
    other = stores.ResultsMirror(s3.uri("elsewhere"))
    assert other.sync(folder, ["part-00003.parquet"], meta).uploaded == ("part-00003.parquet",)


def test_a_throttled_read_is_retried_then_given_up_as_the_rows_error(
    s3: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stores, "FIRST_WAIT_S", 0.0)  # no waiting between attempts in a test
    monkeypatch.setattr(stores, "MAX_WAIT_S", 0.0)
    uri = s3.put("a.bin", b"abc")
    fs = stores.filesystem("s3")
    real = fs.cat_file
    calls: list[int] = []

    def throttled(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise OSError(errno.EBUSY, "Please reduce your request rate (SlowDown)")
        return real(*args, **kwargs)

    monkeypatch.setattr(fs, "cat_file", throttled)
    failures = 2
    assert stores.read_object(uri, 10) == b"abc" and len(calls) == 3
    calls.clear()
    failures = 100
    with pytest.raises(DownloadError, match="SlowDown") as caught:
        stores.read_object(uri, 10)
    assert type(caught.value) is DownloadError and len(calls) == stores.ATTEMPTS


def test_a_failed_upload_is_one_line_and_the_next_sync_sends_only_what_is_missing(
    s3: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    names = [f"part-0000{n}.parquet" for n in (1, 2, 3)]
    for name in names:
        (folder / name).write_bytes(name.encode())
    mirror, meta = stores.ResultsMirror(s3.uri("out/")), _Meta()
    fs = stores.filesystem("s3")
    real = fs.put_file

    def refuse_part_2(local: str, remote: str, **kwargs: Any) -> Any:
        if remote.endswith("part-00002.parquet"):
            raise PermissionError("Access Denied")
        return real(local, remote, **kwargs)

    monkeypatch.setattr(fs, "put_file", refuse_part_2)
    with pytest.raises(
        stores.StoreError, match=r"results_uri: cannot write part-00002.parquet .*Access Denied"
    ):
        mirror.sync(folder, names, meta)
    monkeypatch.setattr(fs, "put_file", real)
    assert mirror.sync(folder, names, meta).uploaded == ("part-00002.parquet", "part-00003.parquet")
    assert s3.keys("out") == [f"out/{n}" for n in names]
