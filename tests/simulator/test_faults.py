"""Fault injection and the latency model: seeded draws, shares, the formula, and, through real
sockets, what a client sees of an injected 529/500/504, a dropped connection and a stall."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import anyio
import httpx
import pytest

from batcher import facts
from batcher.simulator import faults as faults_mod
from batcher.simulator.config import Faults, Latency, SimConfig
from batcher.simulator.errors import ApiError
from batcher.simulator.faults import KINDS, FaultInjector
from batcher.simulator.records import MessageCost

HEADERS = {"x-api-key": "test", "anthropic-version": facts.API_VERSION}
BODY = {
    "model": "claude-haiku-5-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Say hello. nonce=f1"}],
}
COST = MessageCost(input_tokens=100, max_tokens=64, megapixels=1.5)


def fates(injector: FaultInjector, n: int) -> list[str | None]:
    return [injector.draw() for _ in range(n)]


# --- draws ---------------------------------------------------------------------------------------


def test_a_seed_replays_the_same_fates_and_another_seed_does_not() -> None:
    config = Faults(overloaded=0.1, server_error=0.1, gateway_timeout=0.1, stall=0.1, drop=0.1, seed=7)
    first = fates(FaultInjector(config, Latency()), 500)
    assert first == fates(FaultInjector(config, Latency()), 500)
    other = Faults(**{**config.__dict__, "seed": 8})
    assert first != fates(FaultInjector(other, Latency()), 500)


def test_jitter_does_not_change_which_requests_fail() -> None:
    config = Faults(overloaded=0.3, seed=3)
    calm = FaultInjector(config, Latency())
    jittery = FaultInjector(config, Latency(jitter_s=1.0))
    a, b = [], []
    for _ in range(200):
        a.append(calm.draw())
        calm.seconds(COST, 10)
        b.append(jittery.draw())
        jittery.seconds(COST, 10)
    assert a == b


def test_fates_come_at_roughly_the_configured_shares() -> None:
    shares = {"overloaded": 0.05, "server_error": 0.03, "gateway_timeout": 0.02, "stall": 0.01, "drop": 0.03}
    n = 40_000
    counts = Counter(fates(FaultInjector(Faults(**shares, seed=11), Latency()), n))
    for kind, share in shares.items():
        # 5 standard deviations of a binomial: fails for a wrong share, never by chance
        sigma = (n * share * (1 - share)) ** 0.5
        assert abs(counts[kind] - n * share) < 5 * sigma, (kind, counts[kind])
    assert counts[None] == n - sum(counts[k] for k in KINDS)


def test_no_faults_configured_draws_nothing() -> None:
    injector = FaultInjector(Faults(), Latency())
    assert set(fates(injector, 1000)) == {None}


def test_reconfigure_keeps_the_sequence_unless_the_seed_changes() -> None:
    config = Faults(drop=0.5, seed=1)
    straight = fates(FaultInjector(config, Latency()), 40)
    injector = FaultInjector(config, Latency())
    head = fates(injector, 20)
    injector.configure(Faults(drop=0.5, seed=1), Latency(base_s=1.0))
    assert head + fates(injector, 20) == straight
    injector.configure(Faults(drop=0.5, seed=1234), Latency())
    injector.configure(Faults(drop=0.5, seed=1), Latency())
    assert fates(injector, 40) == straight


@pytest.mark.parametrize(
    "bad", [Faults(drop=1.5), Faults(overloaded=-0.1), Faults(overloaded=0.6, drop=0.6), Faults(stall_s=-1)]
)
def test_impossible_shares_are_refused(bad: Faults) -> None:
    with pytest.raises(ApiError) as info:
        FaultInjector(bad, Latency())
    assert info.value.status == 400


# --- latency -------------------------------------------------------------------------------------


def test_latency_is_base_plus_per_megapixel_plus_per_output_token() -> None:
    latency = Latency(base_s=0.5, per_megapixel_s=0.2, per_output_token_s=0.01)
    seconds = FaultInjector(Faults(), latency).seconds(COST, output_tokens=40)
    assert seconds == pytest.approx(0.5 + 0.2 * 1.5 + 0.01 * 40)


def test_jitter_is_uniform_within_its_range_and_seeded() -> None:
    latency = Latency(base_s=1.0, jitter_s=0.5)
    draws = [FaultInjector(Faults(seed=5), latency).seconds(COST, 0) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    injector = FaultInjector(Faults(seed=5), latency)
    many = [injector.seconds(COST, 0) for _ in range(2000)]
    assert all(1.0 <= s <= 1.5 for s in many)
    assert 1.2 < sum(many) / len(many) < 1.3


@pytest.mark.anyio
async def test_delay_sleeps_the_model_and_skips_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(faults_mod.anyio, "sleep", fake_sleep)
    await FaultInjector(Faults(), Latency()).delay(COST, 100)
    assert slept == []
    await FaultInjector(Faults(), Latency(per_output_token_s=0.001)).delay(COST, 100)
    assert slept == [pytest.approx(0.1)]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [
        ("overloaded", 529, "overloaded_error"),
        ("server_error", 500, "api_error"),
        ("gateway_timeout", 504, "timeout_error"),
        ("stall", 504, "timeout_error"),
    ],
)
async def test_before_raises_the_apis_errors(
    monkeypatch: pytest.MonkeyPatch, kind: str, status: int, error_type: str
) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(faults_mod.anyio, "sleep", fake_sleep)
    injector = FaultInjector(Faults(**{kind: 1.0}, stall_s=12.0), Latency())
    with pytest.raises(ApiError) as info:
        await injector.before(COST)
    assert (info.value.status, info.value.error_type) == (status, error_type)
    assert slept == ([12.0] if kind == "stall" else [])
    assert injector.injected == Counter({kind: 1})


@pytest.mark.anyio
async def test_before_lets_a_dropped_request_go_on() -> None:
    injector = FaultInjector(Faults(drop=1.0), Latency())
    assert (await injector.before(COST)).drop
    assert not (await FaultInjector(Faults(), Latency()).before(COST)).drop


# --- through real sockets ------------------------------------------------------------------------


def _post(base_url: str, timeout: float = 10.0) -> httpx.Response:
    with httpx.Client(base_url=base_url, headers=HEADERS, timeout=timeout) as client:
        return client.post("/v1/messages", json=BODY)


@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [
        ("overloaded", 529, "overloaded_error"),
        ("server_error", 500, "api_error"),
        ("gateway_timeout", 504, "timeout_error"),
    ],
)
def test_injected_errors_reach_the_client_in_the_apis_shape(
    make_simulator: Any, kind: str, status: int, error_type: str
) -> None:
    sim = make_simulator(SimConfig(faults=Faults(**{kind: 1.0})))
    response = _post(sim.base_url)
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert body["request_id"] == response.headers["request-id"]
    assert sim.sim.ledger.snapshot()["faults"] == {kind: 1}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_dropped_connection_is_a_protocol_error_to_httpx(make_simulator: Any) -> None:
    sim = make_simulator(SimConfig(faults=Faults(drop=1.0)))
    server_log = Records()  # on uvicorn's own logger: it does not propagate to the root
    logging.getLogger("uvicorn.error").addHandler(server_log)
    try:
        _drop_one(sim)
    finally:
        logging.getLogger("uvicorn.error").removeHandler(server_log)
    assert [r.getMessage() for r in server_log.records] == []


def _drop_one(sim: Any) -> None:
    with httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=10) as client:
        received = bytearray()
        with client.stream("POST", "/v1/messages", json=BODY) as response:
            assert response.status_code == 200  # the status line and headers arrived
            expected = int(response.headers["content-length"])
            with pytest.raises(httpx.RemoteProtocolError, match="without sending complete message body"):
                for chunk in response.iter_raw():
                    received += chunk
        assert 0 < len(received) < expected
        # the connection was cut, not the server: the next request is answered in full
        sim.sim.config.faults.drop = 0.0
        sim.sim.reconfigure()
        assert client.post("/v1/messages", json=BODY).status_code == 200
    book = sim.sim.ledger.snapshot()
    assert book["faults"] == {"drop": 1}
    assert book["charges_by_nonce"] == {"f1": 2}  # the API bills what it processed, cut or not


def test_a_stall_outlasts_the_clients_read_timeout(make_simulator: Any) -> None:
    sim = make_simulator(SimConfig(faults=Faults(stall=1.0, stall_s=1.0)))
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        _post(sim.base_url, timeout=0.2)
    assert time.monotonic() - started < 0.9
    # a patient client gets the 504 once the stall is over
    response = _post(sim.base_url, timeout=5.0)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"


def test_latency_is_served(make_simulator: Any) -> None:
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.3)))
    started = time.monotonic()
    assert _post(sim.base_url).status_code == 200
    assert time.monotonic() - started >= 0.3


@pytest.mark.anyio
async def test_requests_wait_side_by_side_not_in_turn(make_simulator: Any) -> None:
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.4)))
    statuses: list[int] = []

    async def one(client: httpx.AsyncClient) -> None:
        statuses.append((await client.post("/v1/messages", json=BODY)).status_code)

    started = time.monotonic()
    async with (
        httpx.AsyncClient(base_url=sim.base_url, headers=HEADERS, timeout=10) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(8):
            tg.start_soon(one, client)
    assert statuses == [200] * 8
    assert time.monotonic() - started < 1.5  # 8 x 0.4 s one after another would be 3.2 s


# --- fatal faults --------------------------------------------------------------------------------


def _error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert body["request_id"] == response.headers["request-id"]
    return body["error"]


def _batch(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/messages/batches", json={"requests": [{"custom_id": "b1", "params": BODY}]})


def test_a_revoked_key_refuses_everything_after_n_paid_requests(make_simulator: Any) -> None:
    sim = make_simulator(SimConfig(faults=Faults(auth_error_after=2)))
    with httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=10) as client:
        assert client.get("/v1/models").status_code == 200  # not paid: does not count
        assert client.post("/v1/messages", json=BODY).status_code == 200
        assert client.post("/v1/messages", json={"model": "claude-haiku-5-5"}).status_code == 400
        assert client.get("/v1/models").status_code == 200  # not tripped yet
        error = _error(client.post("/v1/messages", json=BODY), 401, "authentication_error")
        assert error["message"] == "invalid x-api-key"
        # revoked: every /v1 route now, paid or not; outside /v1 still answers
        for response in (
            client.post("/v1/messages", json=BODY),
            client.get("/v1/models"),
            client.get("/v1/files", headers={"anthropic-beta": facts.FILES_BETA}),
            _batch(client),
        ):
            _error(response, 401, "authentication_error")
        book = client.get("/_ledger").json()
    assert book["faults"] == {"auth_error": 5}
    assert book["requests"]["POST /v1/messages"] == {"200": 1, "400": 1, "401": 2}
    assert book["charges_by_nonce"] == {"f1": 1}  # nothing refused was billed


def test_billing_error_after_n_paid_requests_and_off_again(make_simulator: Any) -> None:
    sim = make_simulator(SimConfig(faults=Faults(billing_error_after=1)))
    with httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=10) as client:
        assert client.post("/v1/messages", json=BODY).status_code == 200
        for response in (client.post("/v1/messages", json=BODY), _batch(client)):
            error = _error(response, 402, "billing_error")
            assert "credit balance is too low" in error["message"]
        assert client.get("/v1/models").status_code == 200  # only paid requests are refused
        assert client.post("/_control", json={"faults": {"billing_error_after": None}}).json() == {"ok": True}
        assert client.post("/v1/messages", json=BODY).status_code == 200
        book = client.get("/_ledger").json()
    assert book["faults"] == {"billing_error": 2}


def test_the_spend_limit_429_tells_its_error_code_and_nothing_else(make_simulator: Any) -> None:
    sim = make_simulator()
    with httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=10) as client:
        for _ in range(3):  # counted from when the setting is made, not from the start
            assert client.post("/v1/messages", json=BODY).status_code == 200
        assert client.post("/_control", json={"faults": {"spend_limit_after": 1}}).status_code == 200
        assert client.post("/v1/messages", json=BODY).status_code == 200
        response = client.post("/v1/messages", json=BODY)
        error = _error(response, 429, "rate_limit_error")
        assert error["details"] == {"error_code": "enforced_spend_limit_reached"}
        assert "API usage limits" in error["message"]
        # nothing but the body says to stop: no retry-after, no x-should-retry
        assert "retry-after" not in response.headers
        assert "x-should-retry" not in response.headers
        _error(_batch(client), 429, "rate_limit_error")
        # setting the same value again does not restart the count
        assert client.post("/_control", json={"faults": {"spend_limit_after": 1}}).status_code == 200
        _error(client.post("/v1/messages", json=BODY), 429, "rate_limit_error")


def test_fatal_faults_are_checked_in_order_and_counted_once_a_request() -> None:
    injector = FaultInjector(
        Faults(auth_error_after=1, billing_error_after=0, spend_limit_after=0), Latency()
    )
    first = injector.fatal("POST", "/v1/messages")
    assert first is not None and first.status == 402  # auth is not due yet; billing is
    second = injector.fatal("POST", "/v1/messages")
    assert second is not None and second.status == 401
    assert injector.paid == 2 and injector.injected == {"billing_error": 1, "auth_error": 1}
    assert FaultInjector(Faults(), Latency()).fatal("POST", "/v1/messages") is None


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_bad_fatal_settings_are_refused(bad: Any) -> None:
    with pytest.raises(ApiError, match=r"faults\.billing_error_after"):
        FaultInjector(Faults(billing_error_after=bad), Latency())


# --- answer faults: refusal, mismatch, mismatch_first --------------------------------------------


def answer_faults(injector: FaultInjector, n: int, structured: bool = True) -> list[str | None]:
    return [injector.answer_fault([f"row-{i}"], structured) for i in range(n)]


def test_answer_faults_are_seeded_and_apart_from_the_error_draws() -> None:
    config = Faults(refusal=0.2, mismatch=0.3, seed=5)
    first = answer_faults(FaultInjector(config, Latency()), 400)
    assert first == answer_faults(FaultInjector(config, Latency()), 400)
    counts = Counter(first)
    assert 40 < counts["refusal"] < 120 and 80 < counts["mismatch"] < 160
    # the error faults' sequence is the same whether answer faults are set or not
    plain = FaultInjector(Faults(overloaded=0.3, seed=5), Latency())
    both = FaultInjector(Faults(overloaded=0.3, refusal=0.5, seed=5), Latency())
    a, b = [], []
    for i in range(200):
        a.append(plain.draw())
        plain.answer_fault([str(i)], True)
        b.append(both.draw())
        both.answer_fault([str(i)], True)
    assert a == b


def test_a_mismatch_needs_a_structured_answer_and_a_refusal_does_not() -> None:
    injector = FaultInjector(Faults(refusal=0.5, mismatch=0.5, seed=1), Latency())
    kinds = answer_faults(injector, 300, structured=False)
    assert set(kinds) == {"refusal", None}
    assert injector.injected["refusal"] == kinds.count("refusal") and injector.injected["mismatch"] == 0


def test_no_answer_faults_configured_draws_nothing() -> None:
    injector = FaultInjector(Faults(), Latency())
    assert answer_faults(injector, 50) == [None] * 50 and not injector.injected


def test_mismatch_first_breaks_each_rows_first_structured_answer_only() -> None:
    injector = FaultInjector(Faults(mismatch_first=True), Latency())
    assert injector.answer_fault(["a"], True) == "mismatch"
    assert injector.answer_fault(["a"], True) is None  # the re-ask
    assert injector.answer_fault(["b"], True) == "mismatch"
    assert injector.answer_fault(["a", "b"], True) == "mismatch"  # another nonce set
    assert injector.answer_fault(["c"], False) is None  # not structured: not its first answer
    assert injector.answer_fault(["c"], True) == "mismatch"
    assert injector.answer_fault([], True) is None  # no nonce: never
    assert injector.injected["mismatch"] == 4
    # switched off and on again: every row starts over
    injector.configure(Faults(), Latency())
    assert injector.answer_fault(["a"], True) is None
    injector.configure(Faults(mismatch_first=True), Latency())
    assert injector.answer_fault(["a"], True) == "mismatch"


def test_a_refusal_does_not_use_up_the_first_answer() -> None:
    injector = FaultInjector(Faults(refusal=1.0, mismatch_first=True), Latency())
    assert injector.answer_fault(["a"], True) == "refusal"
    injector.configure(Faults(mismatch_first=True), Latency())
    assert injector.answer_fault(["a"], True) == "mismatch"


def test_the_nonce_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults_mod, "SEEN_NONCE_SETS", 3)
    injector = FaultInjector(Faults(mismatch_first=True), Latency())
    assert answer_faults(injector, 4) == ["mismatch"] * 4
    assert injector.answer_fault(["row-0"], True) == "mismatch"  # forgotten, the oldest
    assert injector.answer_fault(["row-3"], True) is None


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (Faults(refusal=1.5), "faults.refusal: a share must be within 0..1"),
        (Faults(mismatch=-0.1), "faults.mismatch: a share must be within 0..1"),
        (Faults(refusal=0.6, mismatch=0.6), "refusal and mismatch add up to 1.2"),
    ],
)
def test_impossible_answer_shares_are_refused(bad: Faults, says: str) -> None:
    with pytest.raises(ApiError, match=says):
        FaultInjector(bad, Latency())
