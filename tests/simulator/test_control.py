"""``POST /_control`` through real sockets: bad values are the API's 400, naming the setting."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from batcher.simulator.server import RunningSimulator


def control(simulator: RunningSimulator, changes: Any) -> httpx.Response:
    return httpx.post(f"{simulator.base_url}/_control", json=changes, timeout=10)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"today": "yesterday"}, "today"),
        ({"today": 20261201}, "today"),
        ({"limits": {"rpm": "abc"}}, "limits.rpm"),
        ({"limits": {"rpm": True}}, "limits.rpm"),
        ({"limits": {"burst_window_s": None}}, "limits.burst_window_s"),
        ({"limits": 5}, "limits"),
        ({"faults": {"seed": 1.5}}, "faults.seed"),
        ({"faults": {"overloaded": "often"}}, "faults.overloaded"),
        ({"latency": {"base_s": [1]}}, "latency.base_s"),
        ({"platform": "moon"}, "platform"),
        ({"api_key": 7}, "api_key"),
        ({"batches": {"duration_s": -1}}, "batches.duration_s"),
        ({"batches": {"expire_share": 2}}, "batches.expire_share"),
        ({"limits": {"nope": 1}}, "limits.nope"),
        ({"faults": {"auth_error_after": -1}}, "faults.auth_error_after"),
        ({"faults": {"billing_error_after": 2.5}}, "faults.billing_error_after"),
        ({"faults": {"spend_limit_after": "soon"}}, "faults.spend_limit_after"),
    ],
)
def test_a_bad_value_is_a_400_naming_the_key(simulator: RunningSimulator, changes: Any, key: str) -> None:
    before = simulator.sim.config
    snapshot = repr(before)
    response = control(simulator, changes)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(f"{key}: "), body
    assert body["request_id"] == response.headers["request-id"]
    assert repr(simulator.sim.config) == snapshot  # nothing changed


def test_good_values_are_applied_with_their_types(simulator: RunningSimulator) -> None:
    changes = {
        "today": "2026-12-01",
        "limits": {"rpm": 60, "itpm": None},
        "faults": {"seed": 3, "stall_s": 2},
        "platform": "vertex",
    }
    assert control(simulator, changes).json() == {"ok": True}
    config = simulator.sim.config
    assert config.today == dt.date(2026, 12, 1) and config.platform == "vertex"
    assert config.limits.rpm == 60.0 and isinstance(config.limits.rpm, float)
    assert config.faults.seed == 3 and config.faults.stall_s == 2.0
    assert control(simulator, {"today": None}).status_code == 200
    assert simulator.sim.config.today is None


def test_a_body_that_is_not_an_object(simulator: RunningSimulator) -> None:
    for raw in (b"[1]", b"nope"):
        response = httpx.post(f"{simulator.base_url}/_control", content=raw, timeout=10)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
