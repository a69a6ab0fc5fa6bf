"""The one client: its pool is split into small shards, and a request takes the least busy."""

from __future__ import annotations

import anyio
import httpx
import pytest

from batcher.api.client import SHARD_CONNECTIONS, Client

pytestmark = pytest.mark.anyio


async def test_the_pool_is_sharded_and_requests_spread_over_the_least_busy() -> None:
    seen: list[int] = []
    release = anyio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append(sum(client._busy))
        await release.wait()
        return httpx.Response(200, json={"ok": True}, headers={"request-id": "req_1"})

    client = Client(
        "k", "http://api.test", max_connections=4 * SHARD_CONNECTIONS, transport=httpx.MockTransport(answer)
    )
    async with client:
        assert len(client._pools) == 4
        async with anyio.create_task_group() as tg:
            for _ in range(2 * SHARD_CONNECTIONS):
                tg.start_soon(client.request, "GET", "/v1/models")
            with anyio.fail_after(5):
                while len(seen) < 2 * SHARD_CONNECTIONS:
                    await anyio.sleep(0.01)
            # 2 shards' worth in flight, spread evenly: no shard carries more than its share
            assert max(client._busy) - min(client._busy) <= 1
            release.set()
        assert client._busy == [0, 0, 0, 0]


async def test_a_small_job_uses_one_shard() -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={}, headers={"request-id": "r"})

    async with Client(
        "k", "http://api.test", max_connections=4, transport=httpx.MockTransport(answer)
    ) as client:
        assert len(client._pools) == 1
        for _ in range(3):
            assert (await client.request("GET", "/v1/models")).status == 200
