"""Shared fixtures: the simulator on a free loopback port, and the ../shared reference folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batcher.simulator.config import SimConfig
from batcher.simulator.server import RunningSimulator, start_in_thread

REPO = Path(__file__).resolve().parents[1]
#: The ``make_simulator`` fixture: a simulator started with the given config (None: the defaults).
MakeSimulator = Callable[..., RunningSimulator]
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
def openapi(shared_dir: Path) -> dict[str, Any]:
    import json

    path = shared_dir / "api" / "anthropic-openapi.json"
    if not path.is_file():
        pytest.skip("../shared/api/anthropic-openapi.json is absent")
    return json.loads(path.read_text())


@pytest.fixture
def check(openapi: dict[str, Any]) -> Callable[[Any, str], None]:
    """``check(instance, "Message")`` validates against ``#/components/schemas/Message``.

    OpenAPI 3.1 schemas are JSON Schema 2020-12; the whole document is registered as one resource
    so its ``#/components/schemas/...`` references resolve. Skipped where ../shared is absent.
    """
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    doc = "urn:anthropic-openapi"
    registry = Registry().with_resource(doc, Resource(contents=openapi, specification=DRAFT202012))
    validators: dict[str, Draft202012Validator] = {}

    def check(instance: Any, component: str) -> None:
        if component not in validators:
            ref = {"$ref": f"{doc}#/components/schemas/{component}"}
            validators[component] = Draft202012Validator(ref, registry=registry)
        errors = sorted(validators[component].iter_errors(instance), key=lambda e: e.path)
        assert not errors, f"{component}: {errors[0].message} at {list(errors[0].absolute_path)}"

    return check


@pytest.fixture
def make_simulator() -> Iterator[MakeSimulator]:
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
def simulator(make_simulator: MakeSimulator) -> RunningSimulator:
    """A default simulator: no limits, no latency, no faults."""
    return make_simulator()
