"""Prompt caching online (issue 16), through real sockets against the simulator: the first request
that carries the breakpoint goes alone and writes the prefix, the rest read it; the cache's figures
(hit rate, tokens, what it saved) in the results, the state and ``batcher status``."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from batcher.exits import EXIT_OK
from batcher.simulator.config import Latency, SimConfig
from batcher.state import JobState

# UNLIMITED: limits seeded far above the first requests' needs, so the first 16 may go at once.
from tests.helpers import (
    UNLIMITED,
    answer_visible_cache,
    cached_job,
    good_rows,
    results_by_id,
    run_job,
)


def _writes(results: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(i for i, r in results.items() if (r["cache_creation_input_tokens"] or 0) > 0)


def test_with_concurrency_16_exactly_one_request_writes_the_prefix_and_39_read_it(
    tmp_path: Any, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.2)))
    answer_visible_cache(sim, 0.2)
    job = cached_job(tmp_path, good_rows(tmp_path, 40), concurrency=16, extra=UNLIMITED)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    results = results_by_id(tmp_path / "out")
    assert len(_writes(results)) == 1
    assert sum(1 for r in results.values() if (r["cache_read_input_tokens"] or 0) > 0) == 39
    assert "batcher: cache: 39 of 40 requests read the prefix (97%); saved $" in err


def test_without_the_gate_concurrent_rows_all_pay_the_write(
    tmp_path: Any, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control for the test above: with every request told the cache is warm, the first 16 go
    # together and each writes the prefix (so the simulator's stand-in for the API's timing works).
    from batcher.core.warmup import WarmupGate

    monkeypatch.setattr(WarmupGate, "admit", lambda self, now: "read")
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.2)))
    answer_visible_cache(sim, 0.2)
    job = cached_job(tmp_path, good_rows(tmp_path, 40), concurrency=16, extra=UNLIMITED)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert len(_writes(results_by_id(tmp_path / "out"))) > 1


def test_status_shows_the_hit_rate_the_tokens_and_what_the_cache_saved(
    tmp_path: Any, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(latency=Latency(base_s=0.05)))
    job = cached_job(tmp_path, good_rows(tmp_path, 10), concurrency=4)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    with JobState.open(tmp_path / "out") as state:
        s = state.summary()
        rows = [state.get_result(i) for i in results_by_id(tmp_path / "out")]
    saved = sum(r.cache_saved_usd or 0.0 for r in rows if r is not None)
    # Nine reads at 0.1x the input price save more than the one write at 1.25x costs.
    assert saved > 0 and sum(1 for r in rows if r is not None and (r.cache_saved_usd or 0) < 0) == 1
    assert (s.cache_reads, s.cache_uses) == (9, 10)
    assert s.cache_saved_usd == pytest.approx(saved, abs=1e-12)
    out = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "status", str(tmp_path / "out"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(out.stdout)
    assert shown["cache_hit_rate"] == 0.9 and shown["cache_reads"] == 9
    assert shown["cache_saved_usd"] == pytest.approx(saved, abs=1e-12)
    text = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "status", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "cache      9 of 10 requests read the prefix (90%)" in text
