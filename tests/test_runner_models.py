"""The start of every run: ``GET /v1/models/{id}`` once, and the job refused (exit 2, one line,
nothing sent, nothing written) when the API's word on the model says the job cannot run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from batcher.exits import EXIT_CONFIG, EXIT_OK
from batcher.simulator.config import SimConfig
from tests.helpers import run_job

JOB = """
[input]
manifest = "manifest.jsonl"
image_column = "image"
prompt = "Caption it. nonce={{id}}"

[request]
model = "{model}"
max_tokens = {max_tokens}

[run]
output = "out"
mode = "{mode}"
poll_initial_s = 0.05
"""


def write_job(
    tmp: Path, *, model: str = "claude-haiku-5-5", max_tokens: int = 50, mode: str = "online"
) -> Path:
    (tmp / "images").mkdir(exist_ok=True)
    with (tmp / "manifest.jsonl").open("w") as fh:
        for i in range(2):
            Image.new("RGB", (300, 200), (i * 90, 60, 120)).save(tmp / "images" / f"i{i}.jpg")
            fh.write(json.dumps({"id": f"r{i}", "image": f"images/i{i}.jpg"}) + "\n")
    job = tmp / "job.toml"
    job.write_text(JOB.format(model=model, max_tokens=max_tokens, mode=mode))
    return job


def requests(sim: Any) -> dict[str, int]:
    return {
        route: sum(by_status.values()) for route, by_status in sim.sim.ledger.snapshot()["requests"].items()
    }


def api_says(sim: Any, model: str, **changes: Any) -> None:
    """Make the simulator's (the API's) profile of ``model`` differ from batcher's table."""
    profile = sim.sim.registry.get(model)
    if "capabilities" in changes:
        changes["capabilities"] = {**profile.capabilities, **changes["capabilities"]}
    sim.sim.registry = sim.sim.registry.with_profile(dataclasses.replace(profile, **changes))


BEFORE, AFTER = dt.date(2026, 11, 1), dt.date(2026, 12, 1)


def assert_refused(code: int, err: str, sim: Any, tmp: Path, key: str) -> None:
    lines = err.strip().splitlines()
    assert code == EXIT_CONFIG, err
    assert len(lines) == 1 and key in lines[0], err
    sent = requests(sim)
    assert set(sent) == {"GET /v1/models/{id}"} and sum(sent.values()) == 1, sent
    assert not (tmp / "out").exists(), "a refused job must not create its output folder"


def test_a_model_the_api_retired_is_refused_though_the_local_table_still_lists_it(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # batcher's clock says November; the API's says December, after claude-sonnet-4-5 retired.
    sim = make_simulator(SimConfig(today=AFTER))
    job = write_job(tmp_path, model="claude-sonnet-4-5")
    code, err = run_job(job, sim, monkeypatch, today=BEFORE)
    assert_refused(code, err, sim, tmp_path, "request.model")
    assert "does not know 'claude-sonnet-4-5'" in err


def test_a_retired_model_in_the_local_table_is_refused_before_any_request(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(today=AFTER))
    code, err = run_job(write_job(tmp_path, model="claude-sonnet-4-5"), sim, monkeypatch, today=AFTER)
    assert code == EXIT_CONFIG and "retired on 2026-11-30" in err and len(err.strip().splitlines()) == 1
    assert requests(sim) == {}


def test_a_model_that_does_not_exist_is_refused_and_never_probed(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(today=BEFORE))
    code, err = run_job(write_job(tmp_path, model="claude-nonesuch-9"), sim, monkeypatch, today=BEFORE)
    assert_refused(code, err, sim, tmp_path, "request.model")


def test_a_deprecated_model_runs_with_a_warning_naming_its_retirement(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(today=BEFORE))
    code, err = run_job(write_job(tmp_path, model="claude-sonnet-4-5"), sim, monkeypatch, today=BEFORE)
    assert code == EXIT_OK, err
    assert "claude-sonnet-4-5 is deprecated and retires on 2026-11-30" in err


@pytest.mark.parametrize(
    ("changes", "job_args", "key"),
    [
        ({"capabilities": {"image_input": False}}, {}, "request.model"),
        ({"capabilities": {"batch": False}}, {"mode": "batch"}, "run.mode"),
        ({"max_output_tokens": 40}, {"max_tokens": 50}, "request.max_tokens"),
    ],
)
def test_what_the_models_api_says_the_model_cannot_do_refuses_the_job(
    tmp_path: Path,
    make_simulator: Any,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, Any],
    job_args: dict[str, Any],
    key: str,
) -> None:
    sim = make_simulator(SimConfig(today=BEFORE))
    api_says(sim, "claude-haiku-5-5", **changes)
    code, err = run_job(write_job(tmp_path, **job_args), sim, monkeypatch, today=BEFORE)
    assert_refused(code, err, sim, tmp_path, key)


def test_a_model_missing_from_the_table_that_takes_no_images_is_refused_before_probing(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(today=BEFORE))
    profile = sim.sim.registry.get("claude-haiku-5-5")
    text_only = dataclasses.replace(
        profile, id="claude-textonly-1", ids=(), capabilities={**profile.capabilities, "image_input": False}
    )
    sim.sim.registry = sim.sim.registry.with_profile(text_only)
    code, err = run_job(write_job(tmp_path, model="claude-textonly-1"), sim, monkeypatch, today=BEFORE)
    assert_refused(code, err, sim, tmp_path, "request.model")  # no count_tokens probe either
    assert "does not accept images" in err
