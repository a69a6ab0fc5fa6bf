"""Rate limits through real sockets: what a client of ``POST /v1/messages`` sees of the buckets."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from batcher import facts
from batcher.simulator.buckets import UNLIMITED
from batcher.simulator.config import RateLimits, SimConfig
from batcher.simulator.server import RunningSimulator

HEADERS = {"x-api-key": "test", "anthropic-version": facts.API_VERSION}
KINDS = ("requests", "input-tokens", "output-tokens", "tokens")


def body(text: str = "Say hello.", max_tokens: int = 32) -> dict[str, Any]:
    return {
        "model": "claude-haiku-5-5",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    }


def counted(text: str = "Say hello.") -> dict[str, Any]:
    """A count_tokens body (no ``max_tokens``: the endpoint refuses it)."""
    return {k: v for k, v in body(text).items() if k != "max_tokens"}


def limited(make_simulator: Any, **limits: Any) -> Iterator[httpx.Client]:
    sim = make_simulator(SimConfig(limits=RateLimits(**limits)))
    with httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=10) as client:
        yield client


@pytest.fixture
def one_a_second(make_simulator: Any) -> Iterator[httpx.Client]:
    yield from limited(make_simulator, rpm=60, burst_window_s=1)


def assert_ratelimit_headers(response: httpx.Response, kinds: tuple[str, ...] = KINDS) -> None:
    for kind in kinds:
        for field in ("limit", "remaining", "reset"):
            assert facts.ratelimit_header(kind, field) in response.headers, (kind, field, response)


def test_60_rpm_with_a_1_s_window_admits_one_request_a_second(one_a_second: httpx.Client) -> None:
    statuses, retry_after = [], []
    first_answered = None
    for _ in range(10):  # back to back
        response = one_a_second.post("/v1/messages", json=body())
        first_answered = first_answered or time.monotonic()
        statuses.append(response.status_code)
        retry_after.append(response.headers.get("retry-after"))
        assert_ratelimit_headers(response, ("requests",))
    assert statuses == [200] + [429] * 9
    assert retry_after[1:] == ["1"] * 9
    error = one_a_second.post("/v1/messages", json=body())
    assert error.json()["error"]["type"] == "rate_limit_error"
    assert "of 60 requests per minute" in error.json()["error"]["message"]
    # retry-after was honest: a second after the first was admitted, one more goes through
    assert first_answered is not None
    time.sleep(max(0.0, first_answered + 1.0 - time.monotonic()))
    assert one_a_second.post("/v1/messages", json=body()).status_code == 200
    assert one_a_second.post("/v1/messages", json=body()).status_code == 429


def test_every_v1_response_carries_the_ratelimit_headers(make_simulator: Any) -> None:
    for client in limited(make_simulator, rpm=60, itpm=100_000, otpm=20_000, burst_window_s=1):
        responses = [
            client.post("/v1/messages", json=body()),  # 200
            client.post("/v1/messages", json=body()),  # 429
            client.post("/v1/messages", json={"model": "claude-haiku-5-5"}),  # 400
            client.post("/v1/messages/count_tokens", json=counted()),
            client.get("/v1/models"),
            client.get("/v1/no-such-thing"),  # 404
            client.post("/v1/messages", json=body(), headers={"x-api-key": ""}),  # 401
        ]
        assert [r.status_code for r in responses] == [200, 429, 400, 200, 200, 404, 401]
        for response in responses:
            assert_ratelimit_headers(response)
            assert response.headers["request-id"].startswith("req_")
        assert "anthropic-ratelimit-requests-limit" not in client.get("/_ledger").headers


def test_an_unlimited_simulator_reports_a_huge_limit_on_every_response(simulator: RunningSimulator) -> None:
    with httpx.Client(base_url=simulator.base_url, headers=HEADERS, timeout=10) as client:
        responses = [
            client.post("/v1/messages", json=body()),
            client.post("/v1/messages", json={"model": "claude-haiku-5-5"}),  # 400
            client.post("/v1/messages/count_tokens", json=counted()),
        ]
    assert [r.status_code for r in responses] == [200, 400, 200]
    for response in responses:
        assert_ratelimit_headers(response)
        for kind in KINDS:
            assert response.headers[facts.ratelimit_header(kind, "limit")] == str(UNLIMITED)
            assert response.headers[facts.ratelimit_header(kind, "remaining")] == str(UNLIMITED)


def test_input_tokens_bind_when_the_prompt_is_large(make_simulator: Any) -> None:
    # holds 1000, refills 100 a second: back-to-back requests see no noticeable refill
    for client in limited(make_simulator, itpm=6_000, burst_window_s=10):
        prompt = "word " * 300
        n = client.post("/v1/messages/count_tokens", json=counted(prompt)).json()["input_tokens"]
        assert 300 < n < 500  # two fit in the bucket, three do not
        assert [client.post("/v1/messages", json=body(prompt)).status_code for _ in range(3)] == [
            200,
            200,
            429,
        ]
        error = client.post("/v1/messages", json=body(prompt))
        assert "input tokens per minute" in error.json()["error"]["message"]
        short = n - (1000 - 2 * n)  # refilled at 100 tokens a second (less what has trickled in)
        assert int(error.headers["retry-after"]) in (math.ceil(short / 100) - 1, math.ceil(short / 100))
        remaining = int(error.headers["anthropic-ratelimit-input-tokens-remaining"])
        assert remaining < n


def test_cache_reads_do_not_count_toward_itpm(simulator: RunningSimulator) -> None:
    system = [
        {
            "type": "text",
            "text": "Caption the image in one line. " * 80,
            "cache_control": {"type": "ephemeral"},
        }
    ]

    def cached(nonce: str) -> dict[str, Any]:
        return {**body(f"nonce={nonce}"), "system": system}

    with httpx.Client(base_url=simulator.base_url, headers=HEADERS, timeout=10) as client:
        n = client.post(
            "/v1/messages/count_tokens", json={k: v for k, v in cached("a0").items() if k != "max_tokens"}
        ).json()["input_tokens"]
        # holds 1.5 prompts, refills a tenth of that a second: a second full prompt cannot fit
        capacity = 1.5 * n
        update = {"limits": {"itpm": capacity * 6, "burst_window_s": 10}}
        assert client.post("/_control", json=update).status_code == 200
        # every nonce the same shape ("a0", "r0", ...): the uncached rest costs the same each time
        first = client.post("/v1/messages", json=cached("a0"))
        assert first.status_code == 200
        written = first.json()["usage"]["cache_creation_input_tokens"]
        assert written > n / 2  # the prefix is most of the prompt
        # the prefix is now cached: each read costs only the uncached rest against ITPM
        later = [client.post("/v1/messages", json=cached(f"r{i}")) for i in range(3)]
        assert [r.status_code for r in later] == [200, 200, 200]
        usage = later[-1].json()["usage"]
        assert usage["cache_read_input_tokens"] == written
        uncached = n - written
        left = int(later[-1].headers["anthropic-ratelimit-input-tokens-remaining"])
        # what is left is the 1.5 prompts less one full prompt and three uncached rests, plus
        # what refilled in the meantime (well under a second's worth)
        floor = capacity - n - 3 * uncached
        # remaining is rounded down to a whole token (capacity is 1.5 prompts: maybe a half)
        assert math.floor(floor) <= left <= floor + capacity / 10
        # a prompt without the cached prefix is still charged in full
        assert client.post("/v1/messages", json=body("word " * n)).status_code == 429


def test_unused_output_is_given_back(make_simulator: Any) -> None:
    # holds 1000, refills 100 a second: back-to-back requests see no noticeable refill
    for client in limited(make_simulator, otpm=6_000, burst_window_s=10):
        first = client.post("/v1/messages", json=body(max_tokens=600))
        assert first.status_code == 200
        used = first.json()["usage"]["output_tokens"]
        assert used < 100
        left = int(first.headers["anthropic-ratelimit-output-tokens-remaining"])
        assert 1000 - used <= left <= 1000  # the 600 taken came back but for what was used
        # without the refund a second 600 would not fit in the 400 left
        assert client.post("/v1/messages", json=body(max_tokens=600)).status_code == 200


def test_a_request_bigger_than_the_bucket_is_refused_for_good(make_simulator: Any) -> None:
    for client in limited(make_simulator, otpm=6_000, burst_window_s=1):  # holds 100
        response = client.post("/v1/messages", json=body(max_tokens=101))
        assert response.status_code == 429
        assert response.headers["x-should-retry"] == "false"
        assert "can never be admitted" in response.json()["error"]["message"]
        assert client.post("/v1/messages", json=body(max_tokens=100)).status_code == 200


def test_limits_change_live_through_control(simulator: RunningSimulator) -> None:
    with httpx.Client(base_url=simulator.base_url, headers=HEADERS, timeout=10) as client:
        assert client.post("/v1/messages", json=body()).status_code == 200
        update = {"limits": {"rpm": 60, "burst_window_s": 1}}
        assert client.post("/_control", json=update).status_code == 200
        assert [client.post("/v1/messages", json=body()).status_code for _ in range(2)] == [200, 429]
        assert client.post("/_control", json={"limits": {"rpm": None}}).status_code == 200
        assert client.post("/v1/messages", json=body()).status_code == 200


def test_files_api_has_a_budget_of_its_own(make_simulator: Any) -> None:
    for client in limited(make_simulator, rpm=60, files_rpm=60, burst_window_s=1):
        beta = {"anthropic-beta": facts.FILES_BETA}
        assert client.get("/v1/files", headers=beta).status_code == 200
        refused = client.get("/v1/files", headers=beta)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert "Files API requests per minute" in refused.json()["error"]["message"]
        assert client.post("/v1/messages", json=body()).status_code == 200


def test_refused_settings_leave_the_simulator_as_it_was(make_simulator: Any) -> None:
    for client in limited(make_simulator, rpm=60, burst_window_s=1):
        for bad in (
            {"limits": {"rpm": 0}},
            {"faults": {"drop": 2}},
            {"limits": {"rpm": 120}, "faults": {"overloaded": -1}},
        ):
            assert client.post("/_control", json=bad).status_code == 400
        assert [client.post("/v1/messages", json=body()).status_code for _ in range(2)] == [
            200,
            429,
        ]  # still 60 RPM, and no faults
        assert client.get("/_ledger").json()["faults"] == {}
