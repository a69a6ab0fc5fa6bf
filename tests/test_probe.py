"""Models the table lacks: the native size is learned from count_tokens, never guessed high."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from batcher import probe
from batcher.models import build_registry, load_registry, packaged_models_path
from tests.helpers import batcher, estimate_json, good_rows, messages_sent, results_by_id, write_job

KNOWN = [(1568, 1568), (2576, 4784)]


@pytest.mark.parametrize(("edge", "budget"), KNOWN)
def test_known_sizes_are_recognised(edge: int, budget: int) -> None:
    measured = tuple(n + 3 for n in probe.expected_counts(edge, budget))  # a little framing
    assert probe.infer_native(measured, KNOWN) == (edge, budget, True)


def test_an_unknown_size_falls_back_to_the_smallest() -> None:
    assert probe.infer_native((9000, 9000), KNOWN) == (1568, 1568, False)


def test_the_probes_tell_the_two_sizes_apart() -> None:
    assert probe.expected_counts(1568, 1568) != probe.expected_counts(2576, 4784)


def test_a_probed_profile_is_conservative() -> None:
    registry = load_registry()
    info = {
        "max_tokens": 32000,
        "max_input_tokens": 500_000,
        "capabilities": {"image_input": {"supported": True}, "batch": {"supported": False}},
    }
    profile = probe.probed_profile("claude-new-1", info, 2576, 4784, registry)
    assert (profile.native_edge, profile.image_token_budget) == (2576, 4784)
    assert profile.max_output_tokens == 32000 and profile.context_window == 500_000
    assert profile.images_per_request == 100 and profile.max_image_b64_bytes == 5 * 1024 * 1024
    assert not profile.sampling_params and not profile.can("batch")
    assert profile.min_cacheable_tokens is None  # not published: the cache decision says unknown
    top = max(p.prices.input for p in registry.all())
    assert profile.prices.input == top
    assert probe.from_meta(probe.to_meta(profile), registry) == profile


def test_run_probes_an_unknown_model_once_and_sends_at_its_size(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    base = tomllib.loads(packaged_models_path().read_text())
    new = {
        "models": {
            "claude-future-9": {
                "native_edge": 2576,
                "image_token_budget": 4784,
                "images_per_request": 600,
                "sampling_params": False,
                "prices": {"input": 1.0, "output": 2.0},
            }
        }
    }
    simulator.sim.registry = build_registry(base, [("test", new)])
    rows = good_rows(tmp_path, 2)
    from PIL import Image

    Image.new("RGB", (3840, 2160), (10, 200, 30)).save(tmp_path / "images" / "big.jpg")
    rows.append({"id": "big", "image": "images/big.jpg", "kind": "frame"})
    job = write_job(tmp_path, rows)
    job.write_text(job.read_text().replace("claude-haiku-5-5", "claude-future-9"))

    first = batcher(job, simulator)
    assert first.returncode == 0, first.stderr
    assert "probed through count_tokens: native 2576 px / 4784 tokens" in first.stderr
    results = results_by_id(tmp_path / "out")
    assert results["big"]["images"][0]["width"] == 2576 and results["big"]["images"][0]["height"] == 1449
    assert simulator.sim.ledger.snapshot()["images_resized"] == 0
    counted = sum(simulator.sim.ledger.snapshot()["requests"]["POST /v1/messages/count_tokens"].values())
    assert counted == 3 and messages_sent(simulator) == 3

    again = batcher(job, simulator)  # the probe is kept in the job state
    assert again.returncode == 0 and "probed" not in again.stderr
    counted = sum(simulator.sim.ledger.snapshot()["requests"]["POST /v1/messages/count_tokens"].values())
    assert counted == 3

    # `batcher estimate` uses the probed profile too: its image tokens are what the API counted.
    import json

    shown = estimate_json(job)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["image_tokens"] == simulator.sim.ledger.snapshot()["image_tokens"]


def test_a_model_the_api_does_not_know_is_refused(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    job = write_job(tmp_path, good_rows(tmp_path, 1))
    job.write_text(job.read_text().replace("claude-haiku-5-5", "claude-nonexistent-1"))
    done = batcher(job, simulator)
    assert done.returncode == 2 and "request.model: the API does not know" in done.stderr
    assert messages_sent(simulator) == 0
