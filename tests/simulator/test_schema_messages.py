"""Bodies against the published OpenAPI document: what the tests send and what the simulator answers.

The ``check`` fixture (tests/conftest.py) validates against the document's components; skipped
where ../shared is absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from batcher import facts
from batcher.simulator.server import RunningSimulator
from tests.simulator.test_messages import RICH_SCHEMA, TOOL
from tests.simulator.test_validate import b64_image, image_block, image_bytes

HEADERS = {"x-api-key": "test", "anthropic-version": facts.API_VERSION}
Check = Callable[[Any, str], None]


@pytest.fixture
def client(simulator: RunningSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=simulator.base_url, headers=HEADERS, timeout=30) as c:
        yield c


def user(*content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(content)}]


TEXT = {"type": "text", "text": "Caption the image. nonce=schema-1"}
REQUESTS: dict[str, dict[str, Any]] = {
    "base64": {
        "model": "claude-haiku-5-5",
        "max_tokens": 200,
        "messages": user(image_block(b64_image(300, 200)), TEXT),
    },
    "url and system": {
        "model": "claude-opus-4-8",
        "max_tokens": 200,
        "system": "Be brief.",
        "messages": user(
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png?w=3000&h=2000"}},
            TEXT,
        ),
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    },
    "forced tool": {
        "model": "claude-haiku-4-5",
        "max_tokens": 400,
        "messages": user(TEXT),
        "tools": [{**TOOL, "input_schema": RICH_SCHEMA}],
        "tool_choice": {"type": "tool", "name": TOOL["name"]},
    },
    "structured": {
        "model": "claude-sonnet-5-5",
        "max_tokens": 400,
        "messages": user(TEXT),
        "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": RICH_SCHEMA}},
    },
    "cached and cut": {
        "model": "claude-haiku-5-5",
        "max_tokens": 4,
        "system": [
            {
                "type": "text",
                "text": "Caption images. " * 200,
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ],
        "messages": [*user(TEXT), {"role": "assistant", "content": "Sure:"}],
    },
    "old model with sampling": {
        "model": "claude-haiku-4-5",
        "max_tokens": 50,
        "temperature": 0.2,
        "messages": user(TEXT),
        "thinking": {"type": "disabled"},
    },
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_requests_and_their_answers_fit_the_schema(name: str, check: Check, client: httpx.Client) -> None:
    request = REQUESTS[name]
    check(request, "CreateMessageParams")
    response = client.post("/v1/messages", json=request)
    assert response.status_code == 200, response.text
    check(response.json(), "Message")
    count_body = {
        k: v
        for k, v in request.items()
        if k not in ("max_tokens", "stop_sequences", "metadata", "temperature")
    }
    check(count_body, "CountMessageTokensParams")
    counted = client.post("/v1/messages/count_tokens", json=count_body)
    if name == "url and system":  # count_tokens takes base64 images only
        assert counted.status_code == 400, counted.text
        check(counted.json(), "ErrorResponse")
    else:
        assert counted.status_code == 200, counted.text
        check(counted.json(), "CountMessageTokensResponse")


def test_file_sources_fit_the_beta_schema(
    check: Check, client: httpx.Client, simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simulator.sim.files, "image_bytes", {"file_9": (image_bytes(), "image/png")}.get)
    request = {
        "model": "claude-haiku-5-5",
        "max_tokens": 100,
        "messages": user({"type": "image", "source": {"type": "file", "file_id": "file_9"}}),
    }
    check(request, "BetaCreateMessageParams")
    response = client.post("/v1/messages", json=request, headers={"anthropic-beta": facts.FILES_BETA})
    assert response.status_code == 200, response.text
    check(response.json(), "Message")


def test_model_answers_fit_the_schema(check: Check, client: httpx.Client) -> None:
    listed = client.get("/v1/models", params={"limit": 1000}).json()
    check(listed, "ListResponse_ModelInfo_")
    for model in listed["data"]:
        check(model, "ModelInfo")
    check(client.get("/v1/models", params={"limit": 2}).json(), "ListResponse_ModelInfo_")


@pytest.mark.parametrize(
    ("request_args", "status"),
    [
        (
            {
                "method": "POST",
                "url": "/v1/messages",
                "json": {"model": "claude-haiku-5-5", "max_tokens": 5, "messages": user({"type": "text"})},
            },
            400,
        ),
        (
            {
                "method": "POST",
                "url": "/v1/messages",
                "json": {"model": "claude-nope", "max_tokens": 5, "messages": user(TEXT)},
            },
            404,
        ),
        ({"method": "GET", "url": "/v1/models/claude-nope"}, 404),
        ({"method": "GET", "url": "/v1/models", "headers": {"x-api-key": ""}}, 401),
        (
            {
                "method": "POST",
                "url": "/v1/messages/count_tokens",
                "json": {"model": "claude-haiku-5-5", "messages": user(TEXT)},
                "headers": {"anthropic-beta": "nope"},
            },
            400,
        ),
    ],
)
def test_errors_fit_the_schema(
    request_args: dict[str, Any], status: int, check: Check, client: httpx.Client
) -> None:
    response = client.request(**request_args)
    assert response.status_code == status, response.text
    check(response.json(), "ErrorResponse")
