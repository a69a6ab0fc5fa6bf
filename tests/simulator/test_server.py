"""Serving the simulator: ``batcher simulate`` as a real subprocess (URL line, options, clean
exit on SIGINT/SIGTERM), and the thread server stopping with a stalled request in flight."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from batcher import facts
from batcher.simulator.config import Faults, SimConfig
from batcher.simulator.server import (
    SimulatorStartError,
    announce_line,
    running,
    start_subprocess,
    stop_subprocess,
)

HEADERS = {"x-api-key": "test", "anthropic-version": facts.API_VERSION}
BODY = {"model": "claude-haiku-5-5", "max_tokens": 16, "messages": [{"role": "user", "content": "Hello."}]}


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batcher.cli", "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def foreground() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``batcher simulate --rpm 120`` in a child whose output the test reads itself."""
    proc = _spawn("--rpm", "120", "--burst-window", "1")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = line.split("simulator listening on ", 1)[1].split()[0]
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_simulate_prints_its_url_once_and_serves(foreground: tuple[subprocess.Popen[str], str]) -> None:
    _proc, url = foreground
    assert url.startswith("http://127.0.0.1:")
    response = httpx.post(f"{url}/v1/messages", json=BODY, headers=HEADERS, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["anthropic-ratelimit-requests-limit"] == "120"
    assert response.headers["request-id"].startswith("req_")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_it_cleanly_with_exit_code_0(
    foreground: tuple[subprocess.Popen[str], str], sig: signal.Signals
) -> None:
    proc, url = foreground
    # an idle keep-alive connection must not hold the shutdown up
    with httpx.Client(base_url=url, headers=HEADERS, timeout=10) as client:
        assert client.post("/v1/messages", json=BODY).status_code == 200
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_the_announced_line_is_what_start_subprocess_reads() -> None:
    url, proc = start_subprocess(
        ["--latency", "0.2", "--per-output-token", "0", "--per-megapixel", "0", "--files-rpm", "100"]
    )
    try:
        assert announce_line(url).startswith(f"simulator listening on {url} ")
        started = time.monotonic()
        response = httpx.post(f"{url}/v1/messages", json=BODY, headers=HEADERS, timeout=10)
        assert response.status_code == 200
        assert time.monotonic() - started >= 0.2  # --latency reached the server
    finally:
        assert stop_subprocess(proc) == 0


def test_fault_options_reach_the_server() -> None:
    url, proc = start_subprocess(["--fault", "stall=1", "--stall-seconds", "0.3", "--seed", "4"])
    try:
        started = time.monotonic()
        response = httpx.post(f"{url}/v1/messages", json=BODY, headers=HEADERS, timeout=10)
        assert response.status_code == 504
        assert time.monotonic() - started >= 0.3
        assert httpx.get(f"{url}/_ledger").json()["faults"] == {"stall": 1}
    finally:
        assert stop_subprocess(proc) == 0


def test_a_fatal_fault_option_reaches_the_server() -> None:
    url, proc = start_subprocess(["--fault", "spend_limit_after=2"])
    try:
        with httpx.Client(base_url=url, headers=HEADERS, timeout=10) as client:
            for _ in range(2):
                assert client.post("/v1/messages", json=BODY).status_code == 200
            third = client.post("/v1/messages", json=BODY)
            assert third.status_code == 429, third.text
            error = third.json()["error"]
            assert error["type"] == "rate_limit_error"
            assert error["details"]["error_code"] == "enforced_spend_limit_reached"
            assert client.get("/_ledger").json()["faults"] == {"spend_limit": 1}
    finally:
        assert stop_subprocess(proc) == 0


@pytest.mark.parametrize(("today", "status"), [("2026-11-30", 200), ("2026-12-01", 404)])
def test_the_today_option_decides_which_models_have_retired(today: str, status: int) -> None:
    url, proc = start_subprocess(["--today", today])
    try:
        response = httpx.get(f"{url}/v1/models/claude-sonnet-4-5", headers=HEADERS, timeout=10)
        assert response.status_code == status, response.text
    finally:
        assert stop_subprocess(proc) == 0


def test_the_platform_option_refuses_file_sources_on_bedrock() -> None:
    url, proc = start_subprocess(["--platform", "bedrock"])
    block = {"type": "image", "source": {"type": "file", "file_id": "file_abc"}}
    body = {**BODY, "messages": [{"role": "user", "content": [block]}]}
    try:
        response = httpx.post(
            f"{url}/v1/messages",
            json=body,
            timeout=10,
            headers={**HEADERS, "anthropic-beta": facts.FILES_BETA},
        )
        assert response.status_code == 400, response.text
        assert "bedrock" in response.json()["error"]["message"]
    finally:
        assert stop_subprocess(proc) == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--fault", "meteor=0.1"], "unknown fault kind 'meteor'"),
        (["--fault", "drop"], "expected KIND=SHARE"),
        (["--fault", "drop=0.7", "--fault", "overloaded=0.7"], "add up to 1.4"),
        (["--fault", "spend_limit_after=x"], "expected spend_limit_after=N"),
        (["--fault", "auth_error_after=-1"], "expected auth_error_after=N"),
        (["--fault", "billing_error_after=1.5"], "expected billing_error_after=N"),
        (["--fault", "refusal=1.5"], "faults.refusal: a share must be within 0..1"),
        (["--fault", "refusal=0.5", "--fault", "mismatch=0.6"], "refusal and mismatch add up to 1.1"),
        (["--fault", "mismatch_first=yes"], "expected mismatch_first=1 (on) or =0"),
        (["--rpm", "0"], "limits.rpm: must be positive"),
        (["--today", "yesterday"], "is not YYYY-MM-DD"),
    ],
)
def test_bad_settings_are_one_line_usage_errors(args: list[str], says: str) -> None:
    proc = _spawn(*args)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert says in err
    assert len(err.strip().splitlines()) == 1, err
    assert "listening" not in out


def test_answer_faults_on_the_command_line() -> None:
    url, proc = start_subprocess(["--fault", "refusal=1", "--fault", "mismatch_first"])
    try:
        response = httpx.post(f"{url}/v1/messages", json=BODY, headers=HEADERS, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["stop_reason"] == "refusal"
        assert httpx.get(f"{url}/_ledger", timeout=10).json()["faults"] == {"refusal": 1}
    finally:
        assert stop_subprocess(proc) == 0


def test_start_subprocess_reports_a_child_that_never_listens() -> None:
    with pytest.raises(SimulatorStartError, match="did not print its URL"):
        start_subprocess(["--rpm", "-5"])


def test_stopping_does_not_wait_out_a_stalled_request() -> None:
    with running(SimConfig(faults=Faults(stall=1.0, stall_s=60.0))) as sim:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{sim.base_url}/v1/messages", json=BODY, headers=HEADERS, timeout=0.2)
        started = time.monotonic()
    assert time.monotonic() - started < 4.5  # the graceful wait is bounded, not 60 s
    assert not sim.thread.is_alive()


def test_no_simulator_module_defines_a_name_twice() -> None:
    # A second top-level def silently replaces the first (server.py once had two _announce).
    import ast
    from collections import Counter
    from pathlib import Path

    import batcher.simulator

    for path in sorted(Path(batcher.simulator.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        names = Counter(
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        )
        assert [n for n, k in names.items() if k > 1] == [], path.name
