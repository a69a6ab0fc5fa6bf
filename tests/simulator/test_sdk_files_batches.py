"""The official ``anthropic`` SDK, unmodified, against the simulator's Files API and Message Batches.

Every answer must parse into the SDK's own types, and errors must map to its exception classes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from batcher import facts
from batcher.simulator.config import BatchClock, SimConfig
from batcher.simulator.server import RunningSimulator
from tests.simulator.test_validate import image_bytes

HAIKU = "claude-haiku-5-5"
BETAS: list[Any] = [facts.FILES_BETA]


@pytest.fixture
def fast(make_simulator: Callable[..., RunningSimulator]) -> RunningSimulator:
    return make_simulator(SimConfig(batches=BatchClock(duration_s=0.3)))


@pytest.fixture
def client(fast: RunningSimulator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fast.base_url, api_key="k", max_retries=0) as sdk:
        yield sdk


def ask(nonce: str, *content: Any, model: str = HAIKU) -> dict[str, Any]:
    blocks = [*content, {"type": "text", "text": f"Caption it. nonce={nonce}"}]
    return {"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": blocks}]}


def until_ended(client: anthropic.Anthropic, batch_id: str) -> Any:
    deadline = time.monotonic() + 5
    while (batch := client.messages.batches.retrieve(batch_id)).processing_status != "ended":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return batch


def test_files_lifecycle(client: anthropic.Anthropic) -> None:
    data = image_bytes(120, 80)
    meta = client.beta.files.upload(
        file=("dir/pic.png", data, "image/png"), betas=BETAS, expires_in_seconds=3600
    )
    assert isinstance(meta, anthropic.types.beta.BetaFileMetadata)
    assert (meta.filename, meta.mime_type, meta.size_bytes) == ("pic.png", "image/png", len(data))
    assert meta.expires_at is not None and meta.expires_at > meta.created_at

    listed = client.beta.files.list(betas=BETAS)
    assert [f.id for f in listed.data] == [meta.id]
    assert client.beta.files.retrieve_metadata(meta.id, betas=BETAS) == meta

    message = client.beta.messages.create(
        **ask("sdk-f1", {"type": "image", "source": {"type": "file", "file_id": meta.id}}), betas=BETAS
    )
    assert "120x80 image/png (file)" in message.content[0].text  # type: ignore[union-attr]

    deleted = client.beta.files.delete(meta.id, betas=BETAS)
    assert (deleted.id, deleted.type) == (meta.id, "file_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.beta.files.retrieve_metadata(meta.id, betas=BETAS)


def test_files_pages_auto_paginate(client: anthropic.Anthropic) -> None:
    ids = [
        client.beta.files.upload(file=(f"{i}.png", image_bytes(20 + i, 20), "image/png"), betas=BETAS).id
        for i in range(5)
    ]
    walked = [f.id for f in client.beta.files.list(limit=2, betas=BETAS)]
    assert walked == ids[::-1]


def test_files_errors_map_to_sdk_exceptions(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="expires_in_seconds"):
        client.beta.files.upload(
            file=("a.png", image_bytes(), "image/png"), betas=BETAS, expires_in_seconds=60
        )
    with pytest.raises(anthropic.NotFoundError):
        client.beta.files.delete("file_unknown", betas=BETAS)


def test_batch_lifecycle(client: anthropic.Anthropic) -> None:
    requests: list[Any] = [{"custom_id": f"r-{i}", "params": ask(f"sdk-b{i}")} for i in range(4)]
    requests.append({"custom_id": "bad", "params": {"model": HAIKU, "max_tokens": 10, "messages": []}})
    batch = client.messages.batches.create(requests=requests)
    assert isinstance(batch, anthropic.types.messages.MessageBatch)
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 5
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(batch.id)
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(batch.id)  # the SDK refuses before asking

    ended = until_ended(client, batch.id)
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (4, 1)
    assert ended.ended_at is not None and ended.results_url is not None
    lines = list(client.messages.batches.results(batch.id))
    assert all(isinstance(line, anthropic.types.messages.MessageBatchIndividualResponse) for line in lines)
    by_id = {line.custom_id: line.result for line in lines}
    assert [line.custom_id for line in lines] != [r["custom_id"] for r in requests]
    assert by_id["bad"].type == "errored"
    assert by_id["bad"].error.error.type == "invalid_request_error"  # type: ignore[union-attr]
    ok = by_id["r-2"]
    assert ok.type == "succeeded"
    assert ok.message.content[0].text.endswith("nonce=sdk-b2")  # type: ignore[union-attr]

    assert batch.id in [b.id for b in client.messages.batches.list()]
    deleted = client.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


def test_batch_cancel(client: anthropic.Anthropic, fast: RunningSimulator) -> None:
    fast.sim.config.batches.duration_s = 60  # long enough that nothing is due yet
    batch = client.messages.batches.create(
        requests=[{"custom_id": f"c{i}", "params": ask(f"c{i}")} for i in range(3)]
    )  # type: ignore[misc]
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None


def test_batch_envelope_errors(client: anthropic.Anthropic) -> None:
    twice: list[Any] = [{"custom_id": "same", "params": ask("a")}, {"custom_id": "same", "params": ask("b")}]
    with pytest.raises(anthropic.BadRequestError, match=r"requests\.1\.custom_id"):
        client.messages.batches.create(requests=twice)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_unknown")


def test_files_inside_a_beta_batch(client: anthropic.Anthropic) -> None:
    meta = client.beta.files.upload(file=("x.png", image_bytes(50, 40), "image/png"), betas=BETAS)
    source = {"type": "image", "source": {"type": "file", "file_id": meta.id}}
    batch = client.beta.messages.batches.create(
        requests=[{"custom_id": "f", "params": ask("bf", source)}], betas=BETAS
    )  # type: ignore[list-item]
    deadline = time.monotonic() + 5
    while client.beta.messages.batches.retrieve(batch.id, betas=BETAS).processing_status != "ended":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [line] = list(client.beta.messages.batches.results(batch.id, betas=BETAS))
    assert line.result.type == "succeeded"
    assert "50x40 image/png (file)" in line.result.message.content[0].text  # type: ignore[union-attr]


def test_batch_lists_auto_paginate(client: anthropic.Anthropic) -> None:
    ids = [
        client.messages.batches.create(requests=[{"custom_id": "one", "params": ask(f"p{i}")}]).id  # type: ignore[list-item]
        for i in range(3)
    ]
    assert [b.id for b in client.messages.batches.list(limit=1)] == ids[::-1]
