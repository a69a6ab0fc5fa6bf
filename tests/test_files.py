"""batcher.files: the decisions as pure functions, the uploader against the simulator's Files API."""

from __future__ import annotations

import hashlib
import io
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

from batcher.api import errors
from batcher.api.client import Client
from batcher.commands.files import list_lines
from batcher.files import (
    FilesBudget,
    FileUploader,
    RefillBucket,
    UploadError,
    delete_files,
    is_usable,
    parse_expires_at,
    stale_file_ids,
    upload_name,
)
from batcher.retry import RetryPolicy
from batcher.state import FileRecord, JobState

FAST = RetryPolicy(max_attempts=3, max_wait_s=5.0, base_s=0.001, cap_s=0.002)


@dataclass
class Img:
    data: bytes
    media_type: str
    sha256: str


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Img:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return Img(data, "image/jpeg", hashlib.sha256(data).hexdigest())


def fast_budget(rpm: float = 6000.0, concurrency: int = 4) -> FilesBudget:
    return FilesBudget(rpm=rpm, concurrency=concurrency, policy=FAST, rng=random.Random(0))


# --- pure decisions --------------------------------------------------------------------------------


def test_stale_ids_are_the_ones_the_404_names() -> None:
    ids = ["file_abc", "file_def", "file_abc"]
    message = "messages.0.content.1.source.file_id: File not found: file_def"
    assert stale_file_ids(message, ids) == ["file_def"]
    # About a file but naming none of ours: all of them, once each.
    assert stale_file_ids("File not found.", ids) == ["file_abc", "file_def"]
    # A 404 about something else (the model) is not a file's.
    assert stale_file_ids("model: claude-x not found", ids) == []
    # An id that merely starts like ours is not ours.
    assert stale_file_ids("File not found: file_abcd", ["file_abc"]) == ["file_abc"]
    assert stale_file_ids("File not found: file_abcd", ["file_abcd", "file_abc"]) == ["file_abcd"]


def test_usable_until_near_expiry() -> None:
    record = FileRecord("h", "file_1", 10, uploaded_at=0.0, expires_at=1000.0)
    assert is_usable(record, now=500.0, margin_s=300.0)
    assert not is_usable(record, now=701.0, margin_s=300.0)
    assert is_usable(FileRecord("h", "file_1", 10, 0.0, None), now=1e12)


def test_expires_at_parsed_as_unix_time() -> None:
    assert parse_expires_at("2025-04-15T18:37:24.100435Z") == pytest.approx(1744742244.100435)
    assert parse_expires_at("2025-04-15T18:37:24+00:00") == pytest.approx(1744742244.0)
    assert parse_expires_at(None) is None
    assert parse_expires_at("not a time") is None


def test_upload_name_keeps_the_stem_and_names_what_is_sent() -> None:
    assert upload_name("/data/imgs/cat.png", "ab" * 32, "image/jpeg") == "cat.jpg"
    assert upload_name("https://x.example/a/b/dog.webp?sig=1", "ab" * 32, "image/webp") == "dog.webp"
    assert upload_name("", "0123456789abcdef" * 4, "image/png") == "0123456789abcdef.png"


def test_bucket_refills_continuously_and_pauses_after_429() -> None:
    now = [0.0]
    bucket = RefillBucket(60.0, burst_window_s=3.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(1.0)
    now[0] = 1.0
    assert bucket.take() == 0.0
    bucket.pause(5.0)
    assert bucket.take() == pytest.approx(6.0)
    now[0] = 7.0
    assert bucket.take() == 0.0


def test_listing_names_each_file_and_the_total() -> None:
    records = [
        FileRecord("a" * 64, "file_1", 1200, 0.0, None),
        FileRecord("b" * 64, "file_2", 34, 0.0, 100.0),
    ]
    lines = list_lines(records, now=200.0)
    assert "file_1" in lines[1] and "1,200" in lines[1] and "never" in lines[1]
    assert "file_2" in lines[2] and "(expired)" in lines[2]
    assert lines[-1] == "2 file(s), 1,234 bytes stored"


# --- the uploader against the simulator -------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Any:
    st = JobState.open(tmp_path / "out")
    yield st
    st.close()


def uploads(sim: Any) -> dict[str, int]:
    return dict(sim.sim.ledger.snapshot()["uploads_by_hash"])


@pytest.mark.anyio
async def test_fifty_concurrent_callers_share_one_upload(simulator: Any, state: Any) -> None:
    image = jpeg((200, 10, 10))
    async with Client("k", simulator.base_url) as client:
        uploader = FileUploader(client, state, budget=fast_budget())
        got: list[str] = []

        async def one() -> None:
            got.append(await uploader.file_id(image, "red.jpg"))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
    assert len(got) == 50 and len(set(got)) == 1
    assert uploads(simulator) == {image.sha256: 1}
    assert state.get_file(image.sha256).file_id == got[0]
    assert uploader.stats.uploads == 1 and uploader.stats.bytes == len(image.data)
    stored = simulator.sim.files.get(got[0])
    assert stored is not None and stored.filename == "red.jpg" and stored.data == image.data


@pytest.mark.anyio
async def test_a_new_uploader_over_the_same_state_uploads_nothing(simulator: Any, state: Any) -> None:
    images = [jpeg((i * 50, 0, 0)) for i in range(3)]
    async with Client("k", simulator.base_url) as client:
        first = FileUploader(client, state, budget=fast_budget())
        ids = [await first.file_id(img, f"{n}.jpg") for n, img in enumerate(images)]
        again = FileUploader(client, state, budget=fast_budget())
        assert [await again.file_id(img, "x.jpg") for img in images] == ids
    assert again.stats.uploads == 0 and again.stats.reused == 3
    assert sorted(uploads(simulator).values()) == [1, 1, 1]


@pytest.mark.anyio
async def test_a_stale_id_is_replaced_once_for_all_who_name_it(simulator: Any, state: Any) -> None:
    image = jpeg((0, 200, 0))
    async with Client("k", simulator.base_url) as client:
        uploader = FileUploader(client, state, budget=fast_budget())
        old = await uploader.file_id(image, "g.jpg")
        assert simulator.sim.files.delete(old)
        got: list[str] = []

        async def replace() -> None:
            got.append(await uploader.file_id(image, "g.jpg", stale=old))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(replace)
    assert len(set(got)) == 1 and got[0] != old
    assert uploads(simulator) == {image.sha256: 2}
    assert uploader.stats.replaced == 1
    assert state.get_file(image.sha256).file_id == got[0]


@pytest.mark.anyio
async def test_expiry_is_asked_for_and_a_recorded_expiry_means_upload_again(
    simulator: Any, state: Any
) -> None:
    image = jpeg((0, 0, 200))
    now = [1_000_000.0]
    async with Client("k", simulator.base_url) as client:
        uploader = FileUploader(client, state, expires_in_s=3600, budget=fast_budget(), clock=lambda: now[0])
        first = await uploader.file_id(image, "b.jpg")
        record = state.get_file(image.sha256)
        # The API's own expires_at (wall time), not the uploader's clock, is what is recorded.
        assert record.expires_at == pytest.approx(time.time() + 3600, abs=60)
        assert simulator.sim.files.get(first).expires_at is not None
        # Within the margin of its expiry: not referred to again.
        now[0] = record.expires_at - 60
        second = await uploader.file_id(image, "b.jpg")
    assert second != first
    assert uploads(simulator) == {image.sha256: 2}


class FailingClient:
    """A client whose uploads always fail with ``exc`` (counting the attempts)."""

    def __init__(self, exc: errors.APIError) -> None:
        self.exc = exc
        self.calls = 0

    async def upload_file(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        await anyio.sleep(0.01)
        raise self.exc


def status_error(status: int, kind: str) -> errors.APIStatusError:
    return errors.from_response(status, {"error": {"type": kind, "message": "nope"}}, {})


@pytest.mark.anyio
async def test_a_final_upload_error_fails_every_waiter_and_is_not_retried(state: Any) -> None:
    client = FailingClient(status_error(400, "invalid_request_error"))
    uploader = FileUploader(client, state, budget=fast_budget())
    image = jpeg((9, 9, 9))
    failures: list[UploadError] = []

    async def one() -> None:
        try:
            await uploader.file_id(image, "x.jpg")
        except UploadError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
    assert len(failures) == 5 and client.calls == 1
    assert all(not f.retryable and not f.fatal and f.error_type == "upload_failed" for f in failures)
    assert "400" in str(failures[0])
    assert state.get_file(image.sha256) is None


@pytest.mark.anyio
async def test_a_retryable_upload_error_is_retried_then_left_for_the_next_run(state: Any) -> None:
    client = FailingClient(status_error(500, "api_error"))
    uploader = FileUploader(client, state, budget=fast_budget())
    with pytest.raises(UploadError) as caught:
        await uploader.file_id(jpeg((1, 2, 3)), "x.jpg")
    assert caught.value.retryable and client.calls == FAST.max_attempts


@pytest.mark.anyio
async def test_uploads_keep_within_the_files_budget(make_simulator: Any, state: Any) -> None:
    from batcher.simulator.config import RateLimits, SimConfig

    # The simulator allows 600 a minute with a 1 s burst window (10 at once); the client's own
    # bucket is set wider than that, so 429s happen and are absorbed by pause + retry.
    sim = make_simulator(SimConfig(limits=RateLimits(files_rpm=600.0, burst_window_s=1.0)))
    images = [jpeg((i * 16, 7, 7)) for i in range(16)]
    async with Client("k", sim.base_url) as client:
        budget = FilesBudget(
            rpm=6000.0,
            concurrency=8,
            policy=RetryPolicy(max_attempts=8, max_wait_s=30.0),
            rng=random.Random(1),
        )
        uploader = FileUploader(client, state, budget=budget)
        async with anyio.create_task_group() as tg:
            for n, img in enumerate(images):
                tg.start_soon(uploader.file_id, img, f"{n}.jpg")
    assert uploads(sim) == {img.sha256: 1 for img in images}
    assert uploader.stats.uploads == 16
    # 16 uploads at once against a burst of 10: some were refused, and each retried to success.
    assert sim.sim.ledger.snapshot()["requests"]["POST /v1/files"]["429"] >= 1


@pytest.mark.anyio
async def test_delete_files_forgets_them_and_counts_404_as_gone(simulator: Any, state: Any) -> None:
    images = [jpeg((i * 60, 60, 60)) for i in range(3)]
    async with Client("k", simulator.base_url) as client:
        uploader = FileUploader(client, state, budget=fast_budget())
        ids = [await uploader.file_id(img, "x.jpg") for img in images]
        simulator.sim.files.delete(ids[0])
        report = await delete_files(client, state, state.list_files(), budget=fast_budget())
    assert (report.deleted, report.already_gone, report.failed) == (2, 1, [])
    assert report.bytes == sum(len(i.data) for i in images)
    assert state.list_files() == []
    assert simulator.sim.files.live() == []
    assert simulator.sim.ledger.snapshot()["files_bytes_stored"] == 0


def test_the_expiry_margin_follows_the_mode_and_never_exceeds_half_the_life(state: Any) -> None:
    from batcher.files import BATCH_EXPIRY_MARGIN_S, EXPIRY_MARGIN_S

    assert FileUploader(None, state).margin_s == EXPIRY_MARGIN_S
    assert FileUploader(None, state, margin_s=BATCH_EXPIRY_MARGIN_S).margin_s == BATCH_EXPIRY_MARGIN_S
    assert FileUploader(None, state, expires_in_s=3600, margin_s=BATCH_EXPIRY_MARGIN_S).margin_s == 1800


@pytest.mark.anyio
async def test_an_image_uploaded_with_a_short_life_is_reused_in_batch_mode(
    simulator: Any, state: Any
) -> None:
    from batcher.files import BATCH_EXPIRY_MARGIN_S

    image = jpeg((123, 45, 67))
    async with Client("k", simulator.base_url) as client:
        uploader = FileUploader(
            client, state, expires_in_s=3600, margin_s=BATCH_EXPIRY_MARGIN_S, budget=fast_budget()
        )
        ids = {await uploader.file_id(image, "x.jpg") for _ in range(3)}
    assert len(ids) == 1 and uploads(simulator) == {image.sha256: 1}


def test_prepare_memo_keys_on_the_file_as_it_is_and_stays_within_its_bytes(tmp_path: Path) -> None:
    import os

    from batcher.files import PrepareMemo

    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 10)
    memo = PrepareMemo(max_bytes=250)
    key = memo.key(str(path), 1)
    assert key is not None and memo.key(str(path), 2) != key
    assert memo.key("https://example.com/a.jpg", 1) is None
    assert memo.key(str(tmp_path / "missing.jpg"), 1) is None
    image = jpeg((1, 1, 1))
    image.data = b"d" * 100
    memo.put(key, image)
    assert memo.get(key) is image and memo.hits == 1
    os.utime(path, ns=(1, 1))  # touched: a different file as far as the memo knows
    assert memo.get(memo.key(str(path), 1)) is None
    # Least recently used out when the bytes run over.
    others = [tmp_path / f"{n}.jpg" for n in range(2)]
    for other in others:
        other.write_bytes(b"y")
    memo.get(key)
    memo.put(memo.key(str(others[0]), 1), image)
    memo.put(memo.key(str(others[1]), 1), image)
    assert memo.bytes == 200
    assert memo.get(key) is None and memo.get(memo.key(str(others[1]), 1)) is image


@pytest.mark.anyio
async def test_rows_on_one_image_share_its_preparation_but_not_its_failure(tmp_path: Path) -> None:
    from batcher.files import PrepareMemo

    path = tmp_path / "a.jpg"
    path.write_bytes(b"x")
    memo = PrepareMemo()
    calls: list[str] = []
    image = jpeg((5, 5, 5))

    async def prepare(source: str, n: int) -> Img:
        calls.append(source)
        await anyio.sleep(0.01)
        return image

    got: list[Img] = []

    async def one() -> None:
        got.append(await memo.prepare(str(path), 1, prepare))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert len(calls) == 1 and len(got) == 10 and all(g is image for g in got) and memo.hits == 9

    async def broken(source: str, n: int) -> Img:
        calls.append(source)
        await anyio.sleep(0.01)
        raise ValueError("cannot decode")

    failures: list[Exception] = []

    other = tmp_path / "b.jpg"
    other.write_bytes(b"y")

    async def bad() -> None:
        try:
            await memo.prepare(str(other), 1, broken)
        except ValueError as exc:
            failures.append(exc)

    calls.clear()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(bad)
    # One at a time, each row meets the error itself; nothing is remembered for the file.
    assert len(calls) == 3 and len(failures) == 3
    assert memo.get(memo.key(str(other), 1)) is None
