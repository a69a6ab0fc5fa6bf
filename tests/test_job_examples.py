"""The documented examples in jobs/ stay valid: every key known, every value accepted by its model."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.config import check_against_model, job_registry, load_job
from tests.conftest import REPO

EXAMPLES = sorted((REPO / "jobs").glob("*.toml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_fits_its_model(path: Path) -> None:
    job = load_job(path)
    profile = job_registry(job)[job.request.model]
    check_against_model(job, profile)
    assert profile.lifecycle != "deprecated", "examples use current models"


def test_examples_cover_cheap_captioning_and_high_resolution_documents() -> None:
    models = {load_job(p).request.model for p in EXAMPLES}
    assert "claude-haiku-5-5" in models
    registry = job_registry(load_job(EXAMPLES[0]))
    assert any(registry[m].native_edge > 1568 for m in models)
