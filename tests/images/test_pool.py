"""The worker pool: same results as in-process, off the event loop, bounded in time and memory."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from batcher.images.errors import ImageConfigError, ImageError
from batcher.images.pool import ImagePool, PoolError
from batcher.images.prepare import prepare_file
from batcher.images.sizing import ImageOptions
from batcher.models import ModelProfile
from tests.images import builders

pytestmark = pytest.mark.anyio


async def test_results_match_in_process(haiku: ModelProfile, tmp_path: Path) -> None:
    path = tmp_path / "p.jpg"
    path.write_bytes(builders.encode(builders.photo((2000, 1500)), "JPEG"))
    async with ImagePool(workers=2) as pool:
        pooled = await pool.prepare(path, haiku)
    assert pooled == prepare_file(path, haiku)


async def test_many_concurrent_calls_and_errors_do_not_stop_the_pool(
    haiku: ModelProfile, tmp_path: Path
) -> None:
    paths = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        path.write_bytes(builders.encode(builders.photo((300 + i, 200)), "PNG") if i % 3 else b"junk")
        paths.append(path)
    results: dict[int, object] = {}
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.005)

    async def one(i: int, pool: ImagePool) -> None:
        try:
            results[i] = await pool.prepare(paths[i], haiku)
        except ImageError as exc:
            results[i] = exc.error_type

    async with ImagePool(workers=2) as pool, anyio.create_task_group() as group:
        group.start_soon(ticker)
        async with anyio.create_task_group() as inner:
            for i in range(12):
                inner.start_soon(one, i, pool)
        group.cancel_scope.cancel()
    assert ticks > 0  # the event loop kept running while workers decoded
    for i, result in results.items():
        if i % 3:
            assert getattr(result, "width", None) == 300 + i
        else:
            assert result == "not_an_image"
    assert len(results) == 12


async def test_slow_decode_is_killed_and_the_pool_goes_on(haiku: ModelProfile, tmp_path: Path) -> None:
    slow = tmp_path / "slow.png"
    slow.write_bytes(builders.encode(builders.noise((3000, 3000)), "PNG", compress_level=1))
    fine = tmp_path / "fine.jpg"
    fine.write_bytes(builders.encode(builders.photo((400, 300)), "JPEG"))
    async with ImagePool(workers=1) as pool:
        started = time.monotonic()
        with pytest.raises(ImageError) as info:
            await pool.prepare(slow, haiku, ImageOptions(timeout_s=0.05))
        assert info.value.error_type == "image_timeout" and "slow.png" in str(info.value)
        assert time.monotonic() - started < 10
        assert pool.replaced == 1
        prepared = await pool.prepare(fine, haiku)
        assert prepared.width == 400


async def test_memory_bound_gives_out_of_memory(haiku: ModelProfile, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(builders.encode(builders.flat((12_000, 9_000)), "PNG"))  # 324 MB decoded
    async with ImagePool(workers=1) as pool:
        with pytest.raises(ImageError) as info:
            await pool.prepare(big, haiku, ImageOptions(memory_limit_bytes=400 * 1024**2))
        assert info.value.error_type == "out_of_memory"
        small = tmp_path / "small.png"
        small.write_bytes(builders.encode(builders.flat((300, 200)), "PNG"))
        assert (await pool.prepare(small, haiku)).width == 300


async def test_config_errors_are_raised_before_any_work(haiku: ModelProfile) -> None:
    async with ImagePool(workers=1) as pool:
        with pytest.raises(ImageConfigError):
            await pool.prepare(b"x", haiku, ImageOptions(max_b64_bytes=10**9))


async def test_prepare_outside_the_context_is_an_error(haiku: ModelProfile) -> None:
    with pytest.raises(PoolError):
        await ImagePool(workers=1).prepare(b"x", haiku)
