"""Issue 13.12: an endpoint without the Models API (a gateway, a proxy, Bedrock- or Vertex-style
endpoints) is not the API saying the model is unknown. Only the API's own ``not_found_error``
refuses the job; a 404/405/501 in any other shape is one warning line, and the run goes on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from batcher.api.errors import from_response, is_api_error_body
from batcher.runner import EXIT_CONFIG, EXIT_OK, model_check_verdict
from batcher.simulator.config import SimConfig
from tests.helpers import run_job
from tests.test_runner_models import BEFORE, requests, write_job

API_404 = {"type": "error", "error": {"type": "not_found_error", "message": "model: x"}, "request_id": "r"}


@pytest.mark.parametrize(
    ("body", "shaped"),
    [
        (API_404, True),
        ({"message": "no Route matched with those values"}, False),
        ({"error": {"type": "not_found_error", "message": "x"}}, False),  # no envelope type
        ({"type": "error", "error": "Not Found"}, False),
        ("<html>404</html>", False),
        ("", False),
        (None, False),
    ],
)
def test_the_api_error_shape_is_recognised(body: Any, shaped: bool) -> None:
    assert is_api_error_body(body) is shaped
    assert from_response(404, body, {}).api_shaped is shaped


@pytest.mark.parametrize(
    ("status", "shaped", "error_type", "verdict"),
    [
        (404, True, "not_found_error", "unknown_model"),
        (404, False, "not_found_error", "no_models_route"),  # the type a bare 404 defaults to
        (405, False, "api_error", "no_models_route"),
        (501, False, "api_error", "no_models_route"),
        (405, True, "invalid_request_error", "error"),
        (500, False, "api_error", "error"),
        (403, False, "permission_error", "error"),
        (400, True, "invalid_request_error", "error"),
    ],
)
def test_what_an_error_from_the_models_api_means(
    status: int, shaped: bool, error_type: str, verdict: str
) -> None:
    assert model_check_verdict(status, shaped, error_type) == verdict


@pytest.mark.parametrize("status", [404, 405, 501])
def test_a_gateway_without_the_models_api_warns_once_and_runs_with_the_tables_profile(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    sim = make_simulator(SimConfig(today=BEFORE, models_route_missing=status))
    code, err = run_job(write_job(tmp_path), sim, monkeypatch, today=BEFORE)
    assert code == EXIT_OK, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1, err
    assert f"GET /v1/models/claude-haiku-5-5 answered HTTP {status}" in warnings[0]
    assert "configs/models.toml's profile of claude-haiku-5-5" in warnings[0]
    sent = requests(sim)
    assert sent["GET /v1/models/{id}"] == 1 and sent["POST /v1/messages"] == 2, sent


def test_the_apis_own_not_found_still_refuses(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(today=BEFORE))
    code, err = run_job(write_job(tmp_path, model="claude-nonesuch-9"), sim, monkeypatch, today=BEFORE)
    assert code == EXIT_CONFIG and "does not know 'claude-nonesuch-9'" in err
    assert requests(sim) == {"GET /v1/models/{id}": 1}


def test_behind_a_gateway_a_model_missing_from_the_table_is_probed(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(today=BEFORE, models_route_missing=404))
    newer = dataclasses.replace(sim.sim.registry.get("claude-haiku-5-5"), id="claude-newer-1", ids=())
    sim.sim.registry = sim.sim.registry.with_profile(newer)
    code, err = run_job(write_job(tmp_path, model="claude-newer-1"), sim, monkeypatch, today=BEFORE)
    assert code == EXIT_OK, err
    assert "not in configs/models.toml either: probing it through count_tokens" in err
    sent = requests(sim)
    assert sent["POST /v1/messages/count_tokens"] == 3 and sent["POST /v1/messages"] == 2, sent


def test_behind_a_gateway_a_model_nobody_knows_is_refused_by_the_probe(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(today=BEFORE, models_route_missing=404))
    code, err = run_job(write_job(tmp_path, model="claude-nonesuch-9"), sim, monkeypatch, today=BEFORE)
    lines = err.strip().splitlines()
    assert code == EXIT_CONFIG, err
    assert len(lines) == 2 and "warning" in lines[0]
    assert "request.model: the API does not know 'claude-nonesuch-9'" in lines[1]
    assert "POST /v1/messages" not in requests(sim)
