"""The official ``anthropic`` SDK, unmodified, against the simulator: it parses every answer."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from batcher import facts
from batcher.simulator import tokens
from batcher.simulator.config import SimConfig
from batcher.simulator.core import api_registry
from batcher.simulator.server import RunningSimulator
from tests.simulator.test_validate import b64_image, image_bytes

pytestmark = pytest.mark.anyio

HAIKU = "claude-haiku-5-5"


@pytest.fixture
async def client(simulator: RunningSimulator) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=simulator.base_url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def b64_source(width: int, height: int) -> dict[str, Any]:
    return {"type": "base64", "media_type": "image/png", "data": b64_image(width, height)}


async def test_messages_with_base64_and_url_images(
    client: anthropic.AsyncAnthropic, simulator: RunningSimulator
) -> None:
    message = await client.messages.create(
        model=HAIKU,
        max_tokens=300,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": b64_source(3840, 2160)},
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.jpg?w=640&h=480"},
                    },
                    {"type": "text", "text": "Describe both. nonce=sdk-1"},
                ],
            }
        ],
    )
    assert isinstance(message, anthropic.types.Message)
    assert message.stop_reason == "end_turn" and message.model == HAIKU
    text = message.content[0].text  # type: ignore[union-attr]
    assert "Image 1: 3840x2160 image/png (base64)" in text
    assert "Image 2: 640x480 image/jpeg (url), not fetched." in text
    assert text.endswith("nonce=sdk-1")
    text_tokens = tokens.text_tokens("Describe both. nonce=sdk-1", 130)
    overheads = tokens.MESSAGE_OVERHEAD + 2 * tokens.IMAGE_BLOCK_OVERHEAD
    assert message.usage.input_tokens == 1560 + 23 * 18 + text_tokens + overheads
    assert message.usage.cache_read_input_tokens == 0
    assert simulator.sim.ledger.charges_by_nonce["sdk-1"] == 1


async def test_a_forced_tool(client: anthropic.AsyncAnthropic) -> None:
    tool = {
        "name": "record",
        "description": "Store a caption",
        "input_schema": {
            "type": "object",
            "required": ["caption", "objects"],
            "properties": {
                "caption": {"type": "string"},
                "objects": {"type": "array", "items": {"enum": ["cat", "dog"]}},
            },
        },
    }
    message = await client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=300,
        tools=[tool],
        tool_choice={"type": "tool", "name": "record"},
        messages=[{"role": "user", "content": "Caption it. nonce=tool-1"}],
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert block.name == "record" and block.input["objects"] == ["cat"]
    assert "nonce=tool-1" in block.input["caption"]


async def test_count_tokens(client: anthropic.AsyncAnthropic) -> None:
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "source": b64_source(1000, 1000)}, {"type": "text", "text": "hi"}],
        }
    ]
    counted = await client.messages.count_tokens(model=HAIKU, messages=messages)
    created = await client.messages.create(model=HAIKU, max_tokens=50, messages=messages)
    assert counted.input_tokens == created.usage.input_tokens
    assert counted.input_tokens >= 1296


async def test_models_list_and_retrieve(client: anthropic.AsyncAnthropic) -> None:
    ids = [model.id async for model in client.models.list(limit=4)]  # pages by after_id
    assert ids == [p.id for p in api_registry().all() if not p.is_retired(dt.datetime.now(dt.UTC).date())]
    info = await client.models.retrieve("claude-haiku-4-5-20251001")
    assert info.id == "claude-haiku-4-5" and info.max_input_tokens == 200_000
    assert info.capabilities is not None and info.capabilities.image_input.supported
    assert info.created_at == dt.datetime(2025, 10, 1, tzinfo=dt.UTC)


async def test_files_beta_image_source(
    client: anthropic.AsyncAnthropic, simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        simulator.sim.files, "image_bytes", {"file_1": (image_bytes(500, 400), "image/png")}.get
    )
    message = await client.beta.messages.create(
        model=HAIKU,
        max_tokens=100,
        betas=[facts.FILES_BETA],
        messages=[
            {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}
        ],
    )
    assert "500x400 image/png (file)" in message.content[0].text  # type: ignore[union-attr]
    with pytest.raises(anthropic.NotFoundError, match="file_2"):
        await client.beta.messages.create(
            model=HAIKU,
            max_tokens=100,
            betas=[facts.FILES_BETA],
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "file", "file_id": "file_2"}}],
                }
            ],
        )


# --- errors --------------------------------------------------------------------------------------


async def test_a_bad_media_type_is_a_bad_request_naming_the_path(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(
            model=HAIKU,
            max_tokens=10,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image", "source": {**b64_source(10, 10), "media_type": "image/gif"}},
                    ],
                }
            ],
        )
    assert "messages.0.content.1.source.media_type" in info.value.message
    assert info.value.status_code == 400 and info.value.request_id


async def test_sampling_parameters_on_a_new_model(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        await client.messages.create(
            model=HAIKU,
            max_tokens=10,
            extra_body={"temperature": 0.3},
            messages=[{"role": "user", "content": "x"}],
        )


async def test_a_wrong_key_is_an_authentication_error(make_simulator: Any) -> None:
    handle = make_simulator(SimConfig(api_key="sk-right"))
    async with anthropic.AsyncAnthropic(base_url=handle.base_url, api_key="sk-wrong", max_retries=0) as sdk:
        with pytest.raises(anthropic.AuthenticationError):
            await sdk.messages.create(model=HAIKU, max_tokens=10, messages=[{"role": "user", "content": "x"}])
    async with anthropic.AsyncAnthropic(base_url=handle.base_url, api_key="sk-right", max_retries=0) as sdk:
        assert (await sdk.models.retrieve(HAIKU)).id == HAIKU


async def test_an_unknown_model_is_not_found(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.create(
            model="claude-imaginary-1", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("claude-imaginary-1")


async def test_an_over_size_body_is_refused(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        await client.messages.create(
            model=HAIKU,
            max_tokens=10,
            messages=[{"role": "user", "content": "x" * (facts.MAX_REQUEST_BODY_BYTES + 1)}],
        )
    assert info.value.status_code == 413
