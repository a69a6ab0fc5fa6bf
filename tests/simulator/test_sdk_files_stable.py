"""Issue 13.13: the current SDK (anthropic >= 2.16) serves the Files API as the stable ``client.files``
and sends no ``anthropic-beta`` header; the simulator, like the API, takes Files calls and ``file``
image sources with or without it. The SDK, unmodified, is the oracle: its own types must parse."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from batcher import facts
from batcher.simulator.config import BatchClock, SimConfig
from batcher.simulator.server import RunningSimulator
from tests.simulator.test_sdk_files_batches import ask
from tests.simulator.test_validate import image_bytes


@pytest.fixture
def client(make_simulator: Callable[..., RunningSimulator]) -> Iterator[anthropic.Anthropic]:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.3)))
    with anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0) as sdk:
        yield sdk


def test_the_sdk_has_the_stable_files_resource() -> None:
    # The test floor (pyproject's `test` extra): an older SDK has only client.beta.files.
    assert hasattr(anthropic.Anthropic(api_key="k"), "files")


def test_stable_files_lifecycle_without_a_beta_header(client: anthropic.Anthropic) -> None:
    seen: list[str | None] = []
    data = image_bytes(120, 80)
    raw = client.files.with_raw_response.upload(
        file=("dir/pic.png", data, "image/png"), expires_in_seconds=3600
    )
    seen.append(raw.http_request.headers.get("anthropic-beta"))
    meta = raw.parse()
    assert isinstance(meta, anthropic.types.FileMetadata)
    assert (meta.filename, meta.mime_type, meta.size_bytes) == ("pic.png", "image/png", len(data))
    assert meta.downloadable is False

    assert [f.id for f in client.files.list()] == [meta.id]
    assert client.files.retrieve_metadata(meta.id) == meta

    raw_message = client.messages.with_raw_response.create(
        **ask("stable-f1", {"type": "image", "source": {"type": "file", "file_id": meta.id}})
    )
    seen.append(raw_message.http_request.headers.get("anthropic-beta"))
    assert "120x80 image/png (file)" in raw_message.parse().content[0].text  # type: ignore[union-attr]

    deleted = client.files.delete(meta.id)
    assert (deleted.id, deleted.type) == (meta.id, "file_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.files.retrieve_metadata(meta.id)
    assert seen == [None, None], "the SDK sent a beta header: this test no longer tests its absence"


def test_stable_files_pages_auto_paginate(client: anthropic.Anthropic) -> None:
    ids = [client.files.upload(file=(f"{i}.png", image_bytes(20 + i, 20), "image/png")).id for i in range(5)]
    assert [f.id for f in client.files.list(limit=2)] == ids[::-1]


def test_an_uploaded_file_is_not_downloadable(client: anthropic.Anthropic) -> None:
    meta = client.files.upload(file=("a.png", image_bytes(), "image/png"))
    with pytest.raises(anthropic.BadRequestError) as info:
        client.files.download(meta.id)
    assert info.value.error_code == "file_not_downloadable"
    with pytest.raises(anthropic.NotFoundError):
        client.files.download("file_unknown")


def test_stable_files_errors_map_to_sdk_exceptions(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="expires_in_seconds"):
        client.files.upload(file=("a.png", image_bytes(), "image/png"), expires_in_seconds=60)
    with pytest.raises(anthropic.NotFoundError):
        client.files.delete("file_unknown")
    with pytest.raises(anthropic.BadRequestError, match="anthropic-beta"):
        client.files.list(extra_headers={"anthropic-beta": "files-api-1999-01-01"})


def test_the_beta_header_is_still_taken(client: anthropic.Anthropic) -> None:
    betas: list[Any] = [facts.FILES_BETA]
    meta = client.beta.files.upload(file=("b.png", image_bytes(30, 20), "image/png"), betas=betas)
    assert client.files.retrieve_metadata(meta.id).id == meta.id
    message = client.beta.messages.create(
        **ask("beta-f", {"type": "image", "source": {"type": "file", "file_id": meta.id}}), betas=betas
    )
    assert "30x20 image/png (file)" in message.content[0].text  # type: ignore[union-attr]


def test_a_file_source_in_a_batch_without_a_beta_header(client: anthropic.Anthropic) -> None:
    meta = client.files.upload(file=("x.png", image_bytes(50, 40), "image/png"))
    source = {"type": "image", "source": {"type": "file", "file_id": meta.id}}
    batch = client.messages.batches.create(requests=[{"custom_id": "f", "params": ask("bf", source)}])  # type: ignore[list-item]
    deadline = time.monotonic() + 5
    while client.messages.batches.retrieve(batch.id).processing_status != "ended":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [line] = list(client.messages.batches.results(batch.id))
    assert line.result.type == "succeeded"
    assert "50x40 image/png (file)" in line.result.message.content[0].text  # type: ignore[union-attr]
