"""The official ``anthropic`` SDK, unmodified and with ``max_retries=0``, against the simulator's
error cases: every injected failure reaches it as the error type it has for that failure, with
the status and the request id the simulator sent.

Names the SDK added over time (``OverloadedError``, ``GatewayTimeoutError``,
``PaymentRequiredError``, ``EnforcedSpendLimitReachedError``) are used where this version has
them; otherwise the class they subclass is expected.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from batcher.simulator.config import RateLimits, SimConfig
from batcher.simulator.server import RunningSimulator

HAIKU = "claude-haiku-5-5"
MESSAGES = [{"role": "user", "content": "Say hello. nonce=sdk-err"}]


def sdk_class(name: str, fallback: type[Exception]) -> type[Exception]:
    return getattr(anthropic, name, fallback)


@pytest.fixture
def sdk(simulator: RunningSimulator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=simulator.base_url, api_key="sk-test", max_retries=0, timeout=10.0
    ) as client:
        yield client


def control(simulator: RunningSimulator, changes: dict[str, Any]) -> None:
    response = httpx.post(f"{simulator.base_url}/_control", json=changes, timeout=10)
    assert response.status_code == 200, response.text


def send(sdk: anthropic.Anthropic) -> Any:
    return sdk.messages.create(model=HAIKU, max_tokens=32, messages=MESSAGES)


def status_error(
    sdk: anthropic.Anthropic, expected: type[Exception], status: int, error_type: str
) -> anthropic.APIStatusError:
    """Send one request, expecting ``expected``; check its status, body and request id."""
    with pytest.raises(anthropic.APIStatusError) as info:
        send(sdk)
    exc = info.value
    assert isinstance(exc, expected), (type(exc), expected)
    assert exc.status_code == status
    assert isinstance(exc.body, dict) and exc.body["error"]["type"] == error_type
    # the request id the simulator sent, in the header and the body alike
    assert exc.request_id is not None and exc.request_id.startswith("req_")
    assert exc.request_id == exc.response.headers["request-id"] == exc.body["request_id"]
    return exc


def test_429_is_a_rate_limit_error_with_retry_after(make_simulator: Any) -> None:
    handle = make_simulator(SimConfig(limits=RateLimits(rpm=60, burst_window_s=1)))
    with anthropic.Anthropic(base_url=handle.base_url, api_key="sk-test", max_retries=0) as sdk:
        assert send(sdk).id.startswith("msg_")
        exc = status_error(sdk, anthropic.RateLimitError, 429, "rate_limit_error")
    assert exc.response.headers["retry-after"] == "1"
    assert "requests per minute" in exc.message


@pytest.mark.parametrize(
    ("kind", "status", "error_type", "expected"),
    [
        ("overloaded", 529, "overloaded_error", sdk_class("OverloadedError", anthropic.InternalServerError)),
        ("server_error", 500, "api_error", anthropic.InternalServerError),
        (
            "gateway_timeout",
            504,
            "timeout_error",
            sdk_class("GatewayTimeoutError", anthropic.InternalServerError),
        ),
    ],
)
def test_injected_server_errors(
    simulator: RunningSimulator,
    sdk: anthropic.Anthropic,
    kind: str,
    status: int,
    error_type: str,
    expected: type[Exception],
) -> None:
    control(simulator, {"faults": {kind: 1.0}})
    exc = status_error(sdk, expected, status, error_type)
    assert isinstance(exc, anthropic.InternalServerError)  # every 5xx is one to the SDK
    if status == 500:
        assert type(exc) is anthropic.InternalServerError
    assert simulator.sim.ledger.snapshot()["faults"] == {kind: 1}


def test_two_errors_carry_two_request_ids(simulator: RunningSimulator, sdk: anthropic.Anthropic) -> None:
    control(simulator, {"faults": {"server_error": 1.0}})
    ids = {status_error(sdk, anthropic.InternalServerError, 500, "api_error").request_id for _ in range(2)}
    assert len(ids) == 2


def test_a_dropped_connection_is_a_connection_error(
    simulator: RunningSimulator, sdk: anthropic.Anthropic
) -> None:
    control(simulator, {"faults": {"drop": 1.0}})
    with pytest.raises(anthropic.APIConnectionError) as info:
        send(sdk)
    assert not isinstance(info.value, anthropic.APITimeoutError)
    book = simulator.sim.ledger.snapshot()
    assert book["faults"] == {"drop": 1}
    assert book["charges_by_nonce"] == {"sdk-err": 1}  # processed and billed, then cut


def test_a_stall_past_the_client_timeout_is_a_timeout_error(simulator: RunningSimulator) -> None:
    control(simulator, {"faults": {"stall": 1.0, "stall_s": 1.5}})
    with (
        anthropic.Anthropic(
            base_url=simulator.base_url, api_key="sk-test", max_retries=0, timeout=0.3
        ) as sdk,
        pytest.raises(anthropic.APITimeoutError),
    ):
        send(sdk)
    assert simulator.sim.ledger.snapshot()["faults"] == {"stall": 1}


# --- the fatal faults ----------------------------------------------------------------------------


def test_a_key_revoked_mid_run_is_an_authentication_error(
    simulator: RunningSimulator, sdk: anthropic.Anthropic
) -> None:
    control(simulator, {"faults": {"auth_error_after": 1}})
    send(sdk)
    status_error(sdk, anthropic.AuthenticationError, 401, "authentication_error")
    with pytest.raises(anthropic.AuthenticationError):
        sdk.models.retrieve(HAIKU)


def test_a_billing_error_is_a_402(simulator: RunningSimulator, sdk: anthropic.Anthropic) -> None:
    control(simulator, {"faults": {"billing_error_after": 0}})
    status_error(sdk, sdk_class("PaymentRequiredError", anthropic.APIStatusError), 402, "billing_error")


def test_the_spend_limit_is_a_rate_limit_error_with_its_code(
    simulator: RunningSimulator, sdk: anthropic.Anthropic
) -> None:
    control(simulator, {"faults": {"spend_limit_after": 0}})
    exc = status_error(
        sdk, sdk_class("EnforcedSpendLimitReachedError", anthropic.RateLimitError), 429, "rate_limit_error"
    )
    assert isinstance(exc, anthropic.RateLimitError)
    assert exc.body["error"]["details"] == {"error_code": "enforced_spend_limit_reached"}  # type: ignore[index]
    if hasattr(exc, "error_code"):
        assert exc.error_code == "enforced_spend_limit_reached"
