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


# --- object stores: moto's S3 server on loopback (issue 18) ---------------------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port, once per module: its endpoint URL. Skipped where
    moto or s3fs is not installed (the test extra installs both)."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'batcher[test]')")
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """A fresh bucket on the module's moto server, with the S3 environment pointing at it (the
    endpoint and test credentials, no profile or config file of the machine's): a
    :class:`tests.helpers.Bucket`."""
    from batcher import stores
    from tests.helpers import Bucket

    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    stores.reset_filesystems()
    bucket = Bucket.create(stores.filesystem("s3"))
    try:
        yield bucket
    finally:
        stores.reset_filesystems()


# --- Ray (issue 18): one local instance for the session ------------------------------------------


@pytest.fixture(scope="session")
def local_ray() -> Iterator[Any]:
    """A local Ray instance, started once for every Ray test (a start takes seconds on two cores):
    the ``ray`` module. Four CPUs declared, so four workers of one CPU each can be placed on a
    two-core machine (they mostly wait on the API). Skipped where Ray is not installed."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'batcher[test]')")
    import logging

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()
