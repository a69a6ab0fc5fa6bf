"""Fixtures for the image tests: model profiles from the real table."""

from __future__ import annotations

import dataclasses

import pytest

from batcher.models import ModelProfile, load_registry


@pytest.fixture(scope="session")
def haiku() -> ModelProfile:
    return load_registry()["claude-haiku-5-5"]


@pytest.fixture(scope="session")
def opus() -> ModelProfile:
    return load_registry()["claude-opus-4-8"]


@pytest.fixture(scope="session")
def huge_model(opus: ModelProfile) -> ModelProfile:
    """A model that would take anything up to 8000 px: only the byte limit bounds an image."""
    return dataclasses.replace(opus, id="test-huge", native_edge=8000, image_token_budget=100_000)
