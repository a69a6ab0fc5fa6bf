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


WITH_OUTPUT = [p for p in EXAMPLES if load_job(p).output is not None]


def test_there_is_a_structured_output_example() -> None:
    assert [p.name for p in WITH_OUTPUT] == ["tags.toml"]


@pytest.mark.parametrize("path", WITH_OUTPUT, ids=lambda p: p.name)
def test_example_output_schema_loads(path: Path) -> None:
    from batcher.output import check_column_names, load_output
    from batcher.sink import RESULT_NAMES

    job = load_job(path)
    spec = load_output(job)
    assert spec is not None
    assert spec.column_names()
    check_column_names(spec, RESULT_NAMES, job)


def test_tags_example_has_what_a_captioning_user_asks_for() -> None:
    import pyarrow as pa

    from batcher.output import load_output

    spec = load_output(load_job(REPO / "jobs" / "tags.toml"))
    assert spec is not None
    types = {f.name: f.type for f in spec.arrow_fields()}
    assert types["caption"] == pa.string()
    assert types["tags"] == pa.list_(pa.string())
    assert pa.types.is_struct(types["counts"]) and pa.types.is_struct(types["dominant_colour"])
    assert types["has_text"] == types["is_photo"] == pa.bool_()
    assert spec.schema["properties"]["setting"]["enum"] == ["indoor", "outdoor", "unknown"]
    assert set(spec.schema["properties"]) - set(spec.schema["required"]) == {"text_content"}
    assert spec.schema["properties"]["caption"]["maxLength"] >= 400


def test_fewshot_example_has_a_style_guide_three_examples_and_a_cacheable_prefix() -> None:
    from batcher.estimator import shared_prefix
    from batcher.images.prepare import probe_size

    job = load_job(REPO / "jobs" / "fewshot.toml")
    profile = job_registry(job)[job.request.model]
    assert job.request.model == "claude-haiku-5-5" and job.request.system_file == "prompts/style.md"
    assert job.request.system is not None and 4000 < len(job.request.system.encode()) < 7000
    assert len(job.request.examples) == 3
    for example in job.request.examples:
        path = Path(example.image or "")
        assert path.parent == REPO / "jobs" / "examples" and path.stat().st_size < 80 * 1024
        width, height, _ = probe_size(path)
        assert 1000 <= profile.image_tokens(width, height) <= 1500
        assert isinstance(example.answer, str) and 20 <= len(example.answer.split()) <= 60
    shared = shared_prefix(job, profile, None)
    # Large against a row (a row's image costs at most the model's budget): what the cache saves.
    assert shared.prefix_tokens > 3 * profile.image_token_budget
    assert profile.min_cacheable_tokens is not None and shared.prefix_tokens > profile.min_cacheable_tokens


def test_the_example_images_are_what_the_script_draws() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_example_images", REPO / "scripts" / "make_example_images.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from PIL import Image

    for name, draw in module.IMAGES.items():
        # The same drawing (the fonts a machine has may differ a little: not byte for byte).
        assert Image.open(REPO / "jobs" / "examples" / name).size == draw().size == module.SIZE
    assert sorted(module.IMAGES) == sorted(p.name for p in (REPO / "jobs" / "examples").iterdir())
