"""GET /v1/models and /v1/models/{id} through real sockets: paging, names, retirement."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from batcher import facts
from batcher.models import load_registry
from batcher.simulator.config import SimConfig
from batcher.simulator.core import Simulator, api_registry

HEADERS = {"x-api-key": "test", "anthropic-version": facts.API_VERSION}
BEFORE, AFTER = dt.date(2026, 11, 30), dt.date(2026, 12, 1)  # claude-sonnet-4-5 retires in between


def get(base_url: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{base_url}{path}", params=params, headers=HEADERS)


@pytest.fixture
def base_url(make_simulator: Any) -> str:
    return make_simulator(SimConfig(today=BEFORE)).base_url


def test_the_list_holds_every_live_model_in_registry_order(base_url: str) -> None:
    page = get(base_url, "/v1/models", limit=1000).json()
    ids = [m["id"] for m in page["data"]]
    assert ids == [p.id for p in api_registry().all()]
    assert (page["first_id"], page["last_id"], page["has_more"]) == (ids[0], ids[-1], False)


def test_paging_forward_and_back(base_url: str) -> None:
    everything = [m["id"] for m in get(base_url, "/v1/models", limit=1000).json()["data"]]
    seen: list[str] = []
    after: dict[str, str] = {}
    while True:
        page = get(base_url, "/v1/models", limit=5, **after).json()
        seen += [m["id"] for m in page["data"]]
        assert page["first_id"] == page["data"][0]["id"]
        if not page["has_more"]:
            break
        after = {"after_id": page["last_id"]}
    assert seen == everything
    back = get(base_url, "/v1/models", limit=3, before_id=everything[5]).json()
    assert [m["id"] for m in back["data"]] == everything[2:5] and back["has_more"] is True
    first = get(base_url, "/v1/models", limit=3, before_id=everything[2]).json()
    assert [m["id"] for m in first["data"]] == everything[:2] and first["has_more"] is False
    assert get(base_url, "/v1/models").json()["data"] == get(base_url, "/v1/models", limit=20).json()["data"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "many"},
        {"after_id": "claude-nope"},
        {"after_id": "claude-haiku-5-5", "before_id": "claude-opus-5"},
    ],
)
def test_bad_paging_parameters_are_400(base_url: str, params: dict[str, Any]) -> None:
    response = get(base_url, "/v1/models", **params)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_model_by_any_of_its_names(base_url: str) -> None:
    info = get(base_url, "/v1/models/claude-haiku-4-5-20251001").json()
    assert info["id"] == "claude-haiku-4-5" and info["type"] == "model"
    assert info["created_at"] == "2025-10-01T00:00:00Z"
    assert (info["max_input_tokens"], info["max_tokens"]) == (200_000, 64_000)
    assert get(base_url, "/v1/models/claude-haiku-4-5").json() == info


def test_capabilities_follow_the_profile(base_url: str) -> None:
    haiku = get(base_url, "/v1/models/claude-haiku-5-5").json()["capabilities"]
    assert haiku["image_input"] == {"supported": True} and haiku["batch"] == {"supported": True}
    assert haiku["effort"]["supported"] and haiku["effort"]["low"] == {"supported": True}
    # a model that refuses sampling parameters refuses manual thinking too
    assert haiku["thinking"]["types"] == {"adaptive": {"supported": True}, "enabled": {"supported": False}}
    old = get(base_url, "/v1/models/claude-haiku-4-5").json()["capabilities"]
    assert old["effort"]["supported"] is False
    assert old["thinking"]["types"]["enabled"] == {"supported": True}
    opus = get(base_url, "/v1/models/claude-opus-4-8").json()
    assert (opus["max_input_tokens"], opus["max_tokens"]) == (1_000_000, 128_000)
    for profile in api_registry().all():
        created = get(base_url, f"/v1/models/{profile.id}").json()["created_at"]
        # a model without a published date shows the epoch
        expected = profile.created_at.isoformat() if profile.created_at else "1970-01-01"
        assert created == f"{expected}T00:00:00Z"


def test_unknown_and_retired_models_are_404(make_simulator: Any) -> None:
    before, after = make_simulator(SimConfig(today=BEFORE)), make_simulator(SimConfig(today=AFTER))
    for name in ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929"):
        assert get(before.base_url, f"/v1/models/{name}").status_code == 200
        gone = get(after.base_url, f"/v1/models/{name}")
        assert gone.status_code == 404
        assert gone.json()["error"]["type"] == "not_found_error"
    listed = [m["id"] for m in get(after.base_url, "/v1/models", limit=1000).json()["data"]]
    assert "claude-sonnet-4-5" not in listed and "claude-haiku-5-5" in listed
    assert get(before.base_url, "/v1/models/claude-made-up").status_code == 404


USER_OVERRIDES = """
[models.claude-haiku-5-5]
sampling_params = true
images_per_request = 5000
[models.claude-made-up-1]
prices = { input = 1, output = 1 }
"""


@pytest.mark.parametrize("where", ["BATCHER_MODELS", "XDG_CONFIG_HOME"])
def test_user_model_overrides_never_reach_the_simulator(
    where: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, make_simulator: Any
) -> None:
    # A client misconfigured by its user's table must fail against the simulator as against the API.
    if where == "BATCHER_MODELS":
        user = tmp_path / "mine.toml"
        monkeypatch.setenv("BATCHER_MODELS", str(user))
    else:
        (tmp_path / "batcher").mkdir()
        user = tmp_path / "batcher" / "models.toml"
        monkeypatch.delenv("BATCHER_MODELS", raising=False)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    user.write_text(USER_OVERRIDES)
    client_view = load_registry()  # the client does read it
    assert "claude-made-up-1" in client_view and client_view["claude-haiku-5-5"].sampling_params
    sim = Simulator()
    assert "claude-made-up-1" not in sim.registry
    assert sim.registry["claude-haiku-5-5"].sampling_params is False
    assert sim.registry["claude-haiku-5-5"].images_per_request == 600
    base_url = make_simulator(SimConfig(today=BEFORE)).base_url
    assert get(base_url, "/v1/models/claude-made-up-1").status_code == 404
    refused = httpx.post(
        f"{base_url}/v1/messages",
        headers=HEADERS,
        json={
            "model": "claude-haiku-5-5",
            "max_tokens": 10,
            "temperature": 0.5,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert refused.status_code == 400 and "temperature" in refused.json()["error"]["message"]
