"""Message Batches through real sockets: envelope checks, the batch clock, results, cancel, delete."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from batcher import facts
from batcher.simulator.batchstore import processing_order
from batcher.simulator.config import BatchClock, SimConfig
from batcher.simulator.server import RunningSimulator
from tests.simulator.test_validate import image_block, image_bytes

HEADERS = {"x-api-key": "test", "anthropic-version": facts.API_VERSION}
HAIKU = "claude-haiku-5-5"
BATCHES = "/v1/messages/batches"
Check = Callable[[Any, str], None]


class FakeClock:
    """A monotonic clock a test moves by hand (the batch store reads it on every look)."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fast(make_simulator: Callable[..., RunningSimulator]) -> RunningSimulator:
    return make_simulator(SimConfig(batches=BatchClock(duration_s=0.5)))


@pytest.fixture
def client(fast: RunningSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fast.base_url, headers=HEADERS, timeout=30) as c:
        yield c


@pytest.fixture
def clock(fast: RunningSimulator) -> FakeClock:
    """Put the simulator's batches on a hand-moved clock (set before any batch is created)."""
    fake = FakeClock()
    fast.sim.batches.clock = fake
    return fake


def params(nonce: str, *content: Any, model: str = HAIKU) -> dict[str, Any]:
    blocks = [*content, {"type": "text", "text": f"Caption it. nonce={nonce}"}]
    return {"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": blocks}]}


def good(n: int, prefix: str = "row") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}-{i}", "params": params(f"{prefix}{i}")} for i in range(n)]


def create(client: httpx.Client, requests: list[dict[str, Any]], **headers: str) -> dict[str, Any]:
    response = client.post(BATCHES, json={"requests": requests}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["type"] == facts.ERROR_TYPES[status]
    return str(body["error"]["message"])


def wait_ended(client: httpx.Client, batch_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.get(f"{BATCHES}/{batch_id}").json()
        if batch["processing_status"] == "ended":
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)


def results(client: httpx.Client, batch: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.get(batch["results_url"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-jsonl")
    return [orjson.loads(line) for line in response.content.splitlines() if line]


# --- processing in the background ----------------------------------------------------------------


def test_a_batch_advances_when_only_the_ledger_is_read(fast: RunningSimulator, client: httpx.Client) -> None:
    create(client, good(4))
    deadline = time.monotonic() + 5.0
    while True:  # nobody looks at the batch: the API processes it in the background all the same
        book = client.get("/_ledger").json()
        if len(book["charges_by_nonce"]) == 4:
            break
        assert time.monotonic() < deadline, book
        time.sleep(0.05)
    assert book["charges_by_nonce"] == {f"row{i}": 1 for i in range(4)}
    [batch] = fast.sim.batches.all()
    assert batch.ended
    deadline = time.monotonic() + 2.0
    while fast.sim.batches._ticker is not None:  # nothing unfinished: the ticker stops itself
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # and a new batch starts it again
    create(client, good(1, prefix="again"))
    assert wait_ended(client, fast.sim.batches.all()[0].id)["request_counts"]["succeeded"] == 1


def test_closing_the_store_stops_the_ticker(
    fast: RunningSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    create(client, good(2))  # on a frozen clock: never due, so the ticker keeps looking
    ticker = fast.sim.batches._ticker
    assert ticker is not None and ticker.is_alive()
    fast.sim.close()
    assert not ticker.is_alive()
    clock.now += 10  # a look still processes what is due, ticker or not
    assert client.get(BATCHES).json()["data"][0]["processing_status"] == "ended"


# --- a batch from creation to results --------------------------------------------------------------


def test_good_and_bad_rows_come_back_succeeded_and_errored(
    client: httpx.Client, fast: RunningSimulator
) -> None:
    bad = [
        {"custom_id": "no-messages", "params": {"model": HAIKU, "max_tokens": 10}},
        {"custom_id": "unknown-model", "params": params("u", model="claude-nope")},
        {"custom_id": "bad-media", "params": params("m", image_block(media_type="image/jpeg"))},
    ]
    requests = good(6) + bad
    batch = create(client, requests)
    assert batch["id"].startswith("msgbatch_") and batch["type"] == "message_batch"
    assert batch["processing_status"] == "in_progress" and batch["results_url"] is None
    assert batch["request_counts"] == {
        "processing": 9,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert batch["ended_at"] is None and batch["cancel_initiated_at"] is None
    assert batch["archived_at"] is None and batch["expires_at"] > batch["created_at"]
    assert "not finished" in error_of(client.get(f"{BATCHES}/{batch['id']}/results"), 400)

    ended = wait_ended(client, batch["id"])
    assert ended["request_counts"] == {
        "processing": 0,
        "succeeded": 6,
        "errored": 3,
        "canceled": 0,
        "expired": 0,
    }
    assert ended["ended_at"] >= ended["created_at"]
    assert ended["results_url"] == f"{fast.base_url}{BATCHES}/{batch['id']}/results"

    lines = results(client, ended)
    order = [line["custom_id"] for line in lines]
    assert sorted(order) == sorted(r["custom_id"] for r in requests)
    assert order != [r["custom_id"] for r in requests]
    by_id = {line["custom_id"]: line["result"] for line in lines}
    for i in range(6):
        result = by_id[f"row-{i}"]
        assert result["type"] == "succeeded"
        assert result["message"]["content"][0]["text"].endswith(f"nonce=row{i}")
        assert result["message"]["usage"]["service_tier"] == "batch"
    errors = {cid: by_id[cid]["error"]["error"] for cid in ("no-messages", "unknown-model", "bad-media")}
    assert all(by_id[cid]["type"] == "errored" for cid in errors)
    assert errors["no-messages"]["type"] == "invalid_request_error"
    assert errors["no-messages"]["message"].startswith("messages: ")
    assert errors["unknown-model"]["type"] == "not_found_error"
    assert errors["bad-media"]["message"].startswith("messages.0.content.0.source.media_type: ")

    book = client.get("/_ledger").json()
    assert book["charges_by_nonce"] == {f"row{i}": 1 for i in range(6)}  # errored rows are free
    billed_in = sum(by_id[f"row-{i}"]["message"]["usage"]["input_tokens"] for i in range(6))
    billed_out = sum(by_id[f"row-{i}"]["message"]["usage"]["output_tokens"] for i in range(6))
    assert (book["batch_input_tokens"], book["batch_output_tokens"]) == (billed_in, billed_out)
    assert results(client, ended) == lines  # the results file does not change


def test_processing_is_progressive_but_counts_wait_for_the_end(
    client: httpx.Client, fast: RunningSimulator, clock: FakeClock
) -> None:
    batch = create(client, good(10))
    clock.now += 0.5 * 0.55  # 55% of the duration: the first 5 of 10 are due
    polled = client.get(f"{BATCHES}/{batch['id']}").json()
    assert polled["processing_status"] == "in_progress"
    assert polled["request_counts"]["processing"] == 10
    assert len(client.get("/_ledger").json()["charges_by_nonce"]) == 5
    clock.now += 0.5
    ended = client.get(f"{BATCHES}/{batch['id']}").json()
    assert ended["request_counts"]["succeeded"] == 10
    assert len(client.get("/_ledger").json()["charges_by_nonce"]) == 10


def test_a_seeded_share_expires_and_is_not_charged(make_simulator: Callable[..., RunningSimulator]) -> None:
    handle = make_simulator(SimConfig(batches=BatchClock(duration_s=0.2, expire_share=0.25, seed=7)))
    with httpx.Client(base_url=handle.base_url, headers=HEADERS) as c:
        batch = wait_ended(c, create(c, good(8))["id"])
        assert batch["request_counts"] == {
            "processing": 0,
            "succeeded": 6,
            "errored": 0,
            "canceled": 0,
            "expired": 2,
        }
        lines = results(c, batch)
        expired = {line["custom_id"] for line in lines if line["result"] == {"type": "expired"}}
        assert len(expired) == 2
        charged = set(c.get("/_ledger").json()["charges_by_nonce"])
        assert charged == {f"row{i}" for i in range(8)} - {e.replace("-", "") for e in expired}


def test_processing_order_is_seeded_and_never_the_submission_order() -> None:
    assert processing_order(1, random.Random(0)) == [0]
    for seed in range(50):
        order = processing_order(2, random.Random(seed))
        assert order == [1, 0]
    assert processing_order(30, random.Random("s")) == processing_order(30, random.Random("s"))


# --- the envelope is checked up front ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"requests": [*good(2), {"custom_id": "row-0", "params": params("x")}]}, "requests.2.custom_id"),
        ({"requests": [{"custom_id": "has space", "params": params("x")}]}, "requests.0.custom_id"),
        ({"requests": [{"custom_id": "x" * 65, "params": params("x")}]}, "requests.0.custom_id"),
        ({"requests": [{"custom_id": "", "params": params("x")}]}, "requests.0.custom_id"),
        ({"requests": [{"custom_id": 5, "params": params("x")}]}, "requests.0.custom_id"),
        ({"requests": [*good(1), {"custom_id": "b", "params": "not an object"}]}, "requests.1.params"),
        ({"requests": [{"custom_id": "a"}]}, "requests.0.params"),
        ({"requests": [{"custom_id": "a", "params": {}, "extra": 1}]}, "requests.0.extra"),
        ({"requests": ["row"]}, "requests.0"),
        ({"requests": []}, "requests"),
        ({"requests": {}}, "requests"),
        ({}, "requests"),
        ({"requests": good(1), "stream": True}, "stream"),
    ],
)
def test_bad_envelopes_are_400_naming_the_path(client: httpx.Client, body: dict[str, Any], path: str) -> None:
    message = error_of(client.post(BATCHES, json=body), 400)
    assert message.startswith(f"{path}: "), message


def test_the_duplicate_names_its_twin(client: httpx.Client) -> None:
    body = {"requests": [*good(3), {"custom_id": "row-1", "params": params("x")}]}
    message = error_of(client.post(BATCHES, json=body), 400)
    assert "requests.3.custom_id" in message and "requests.1" in message


def test_request_count_and_size_limits(client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(facts, "BATCH_MAX_REQUESTS", 3)
    assert error_of(client.post(BATCHES, json={"requests": good(4)}), 400).startswith("requests: ")
    create(client, good(3))
    monkeypatch.setattr(facts, "BATCH_MAX_BYTES", 2000)
    response = client.post(BATCHES, json={"requests": good(3, prefix="x" * 300)})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_a_model_without_the_batch_capability_is_refused_at_once(
    client: httpx.Client, fast: RunningSimulator
) -> None:
    base = fast.sim.registry[HAIKU]
    no_batch = dataclasses.replace(
        base, id="claude-nobatch", ids=(), capabilities={**base.capabilities, "batch": False}
    )
    fast.sim.registry = fast.sim.registry.with_profile(no_batch)
    body = {"requests": [*good(2), {"custom_id": "nb", "params": params("x", model="claude-nobatch")}]}
    message = error_of(client.post(BATCHES, json=body), 400)
    assert message.startswith("requests.2.params.model: ") and "Message Batches" in message


def test_unknown_betas_are_refused_at_create(client: httpx.Client) -> None:
    response = client.post(BATCHES, json={"requests": good(1)}, headers={"anthropic-beta": "nope"})
    assert error_of(response, 400).startswith("anthropic-beta: ")


# --- files inside batches ------------------------------------------------------------------------------


def test_file_references_work_with_or_without_the_beta_header(client: httpx.Client) -> None:
    # anthropic 2.16 serves the Files API as stable and sends no beta header: both are accepted.
    beta = {"anthropic-beta": facts.FILES_BETA}
    meta = client.post(
        "/v1/files", files={"file": ("a.png", image_bytes(90, 60), "image/png")}, headers=beta
    ).json()
    source = {"type": "image", "source": {"type": "file", "file_id": meta["id"]}}
    requests = [{"custom_id": "f", "params": params("f1", source)}]
    with_beta = wait_ended(client, create(client, requests, **beta)["id"])
    without = wait_ended(client, create(client, requests)["id"])
    for batch in (with_beta, without):
        [ok] = results(client, batch)
        assert "90x60 image/png (file)" in ok["result"]["message"]["content"][0]["text"]
    gone = [
        {
            "custom_id": "g",
            "params": params("g1", {"type": "image", "source": {"type": "file", "file_id": "file_gone"}}),
        }
    ]
    [refused] = results(client, wait_ended(client, create(client, gone)["id"]))
    assert refused["result"]["type"] == "errored"
    assert "file_gone" in refused["result"]["error"]["error"]["message"]


# --- cancel, delete, list -----------------------------------------------------------------------------


def test_cancel_winds_down_then_the_rest_is_canceled(
    client: httpx.Client, fast: RunningSimulator, clock: FakeClock
) -> None:
    batch = create(client, good(10))
    clock.now += 0.5 * 0.35  # 3 of 10 done
    canceling = client.post(f"{BATCHES}/{batch['id']}/cancel").json()
    assert canceling["processing_status"] == "canceling"
    assert canceling["cancel_initiated_at"] is not None and canceling["ended_at"] is None
    again = client.post(f"{BATCHES}/{batch['id']}/cancel").json()
    assert again["cancel_initiated_at"] == canceling["cancel_initiated_at"]
    assert "cannot be deleted" in error_of(client.delete(f"{BATCHES}/{batch['id']}"), 400)

    clock.now += 0.5 * 0.1 + 0.001  # the wind-down (a tenth of the duration): 4 of 10 done in all
    ended = client.get(f"{BATCHES}/{batch['id']}").json()
    assert ended["processing_status"] == "ended"
    assert ended["request_counts"] == {
        "processing": 0,
        "succeeded": 4,
        "errored": 0,
        "canceled": 6,
        "expired": 0,
    }
    assert ended["ended_at"] > ended["cancel_initiated_at"]
    lines = results(client, ended)
    assert sum(line["result"] == {"type": "canceled"} for line in lines) == 6
    clock.now += 10  # nothing more happens to an ended batch
    assert client.get(f"{BATCHES}/{batch['id']}").json() == ended
    assert len(client.get("/_ledger").json()["charges_by_nonce"]) == 4
    assert "already ended" in error_of(client.post(f"{BATCHES}/{batch['id']}/cancel"), 400)


def test_delete_only_once_ended(client: httpx.Client) -> None:
    batch = create(client, good(2))
    assert "cannot be deleted" in error_of(client.delete(f"{BATCHES}/{batch['id']}"), 400)
    wait_ended(client, batch["id"])
    deleted = client.delete(f"{BATCHES}/{batch['id']}").json()
    assert deleted == {"id": batch["id"], "type": "message_batch_deleted"}
    for response in (
        client.get(f"{BATCHES}/{batch['id']}"),
        client.get(f"{BATCHES}/{batch['id']}/results"),
        client.delete(f"{BATCHES}/{batch['id']}"),
        client.post(f"{BATCHES}/{batch['id']}/cancel"),
    ):
        assert batch["id"] in error_of(response, 404)


def test_list_pages_newest_first(client: httpx.Client) -> None:
    ids = [create(client, good(1, prefix=f"b{i}"))["id"] for i in range(4)]
    first = client.get(BATCHES, params={"limit": 3}).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:3] and first["has_more"]
    rest = client.get(BATCHES, params={"after_id": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == [ids[0]] and not rest["has_more"]
    back = client.get(BATCHES, params={"before_id": rest["first_id"], "limit": 1}).json()
    assert [b["id"] for b in back["data"]] == [ids[1]] and back["has_more"]
    error_of(client.get(BATCHES, params={"limit": 0}), 400)
    error_of(client.get(BATCHES, params={"after_id": "msgbatch_nope"}), 400)


def test_no_batches_on_bedrock(make_simulator: Callable[..., RunningSimulator]) -> None:
    handle = make_simulator(SimConfig(platform="bedrock"))
    with httpx.Client(base_url=handle.base_url, headers=HEADERS) as c:
        assert "bedrock" in error_of(c.post(BATCHES, json={"requests": good(1)}), 404)


# --- against the published schema -------------------------------------------------------------------


def test_answers_match_the_openapi_schema(client: httpx.Client, check: Check) -> None:
    requests = [*good(2), {"custom_id": "bad", "params": {"model": HAIKU}}]
    check({"requests": good(2)}, "CreateMessageBatchParams")  # what the tests send is valid too
    created = create(client, requests)
    check(created, "MessageBatch")
    canceled = create(client, good(3, prefix="c"))
    check(client.post(f"{BATCHES}/{canceled['id']}/cancel").json(), "MessageBatch")
    ended = wait_ended(client, created["id"])
    check(ended, "MessageBatch")
    check(client.get(BATCHES).json(), "ListResponse_MessageBatch_")
    lines = results(client, ended)
    for line in lines + results(client, wait_ended(client, canceled["id"])):
        check(line, "MessageBatchIndividualResponse")
    assert {line["result"]["type"] for line in lines} == {"succeeded", "errored"}
    check(client.delete(f"{BATCHES}/{created['id']}").json(), "DeleteMessageBatchResponse")
    check(client.get(f"{BATCHES}/{created['id']}").json(), "ErrorResponse")
