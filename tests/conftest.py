"""Shared fixtures: the simulator on a free loopback port, and the ../shared reference folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batcher.simulator.config import SimConfig
from batcher.simulator.server import RunningSimulator, start_in_thread

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def shared_dir() -> Path:
    """``../shared``; tests that need it skip cleanly where it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SHARED


@pytest.fixture
def openapi(shared_dir: Path) -> dict:
    import json

    path = shared_dir / "api" / "anthropic-openapi.json"
    if not path.is_file():
        pytest.skip("../shared/api/anthropic-openapi.json is absent")
    return json.loads(path.read_text())


@pytest.fixture
def make_simulator() -> Iterator:
    """Start simulators with a given config; all are stopped at the end of the test."""
    started: list[RunningSimulator] = []

    def make(config: SimConfig | None = None) -> RunningSimulator:
        handle = start_in_thread(config)
        started.append(handle)
        return handle

    yield make
    for handle in started:
        handle.stop()


@pytest.fixture
def simulator(make_simulator) -> RunningSimulator:  # type: ignore[no-untyped-def]
    """A default simulator: no limits, no latency, no faults."""
    return make_simulator()
