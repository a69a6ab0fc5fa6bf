"""Prompt caching in batch mode (issue 16), against the simulator: the 1-hour breakpoint identical
in every request, and the warm-up: one row alone in a batch first, the rest once it has ended (in
the same run with ``wait = true``; in the next run with ``wait = false``)."""

from __future__ import annotations

from typing import Any

import pytest

from batcher.batches import WARMUP_KEY, warmup_state
from batcher.exits import EXIT_INCOMPLETE, EXIT_OK
from batcher.simulator.config import BatchClock, SimConfig
from batcher.state import JobState
from tests.helpers import cached_job, good_rows, results_by_id, run_job


def capture_batches(monkeypatch: pytest.MonkeyPatch) -> list[list[dict[str, Any]]]:
    """The requests of every batch an in-process run creates, in order."""
    from batcher.api.client import Client

    batches: list[list[dict[str, Any]]] = []
    create = Client.create_batch

    async def create_batch(self: Client, requests: Any, betas: Any = ()) -> Any:
        batches.append(list(requests))
        return await create(self, requests, betas)

    monkeypatch.setattr(Client, "create_batch", create_batch)
    return batches


def _breakpoints(request: dict[str, Any]) -> list[dict[str, Any]]:
    system = request["params"].get("system")
    blocks = system if isinstance(system, list) else []
    return [b["cache_control"] for b in blocks if "cache_control" in b]


def test_a_warm_up_batch_of_one_row_goes_first_and_every_request_carries_the_1h_breakpoint(
    tmp_path: Any, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.3)))
    batches = capture_batches(monkeypatch)
    job = cached_job(tmp_path, good_rows(tmp_path, 8), mode="batch")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert [len(b) for b in batches] == [1, 7]
    assert "batcher: cache warm-up: batch " in err and "(1 request) first; the rest follow" in err
    points = [_breakpoints(r) for b in batches for r in b]
    assert points == [[{"type": "ephemeral", "ttl": "1h"}]] * 8
    results = results_by_id(tmp_path / "out")
    warm_up = batches[0][0]["custom_id"]
    assert results[warm_up]["cache_creation_input_tokens"] > 0
    # Hits in batches are best effort: most of the others read what the warm-up wrote.
    reads = sum(1 for r in results.values() if r["cache_read_input_tokens"])
    assert reads >= 4
    assert f"batcher: cache: {reads} of 8 requests read the prefix" in err
    # A second run over more rows: the warm-up is recent, so no new one.
    more = good_rows(tmp_path, 3, start=8)
    with (tmp_path / "manifest.jsonl").open("a") as fh:
        import json

        for row in more:
            fh.write(json.dumps(row) + "\n")
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert [len(b) for b in batches] == [1, 7, 3] and "warm-up" not in err


def test_with_wait_false_the_warm_up_goes_alone_and_the_next_run_sends_the_rest(
    tmp_path: Any, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches take 3 s: long enough that the second tick surely finds the warm-up running.
    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=3.0)))
    batches = capture_batches(monkeypatch)
    job = cached_job(tmp_path, good_rows(tmp_path, 5), mode="batch")
    job.write_text(job.read_text().replace("[run]\n", "[run]\nwait = false\n"))
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE, err
    assert [len(b) for b in batches] == [1]
    with JobState.open(tmp_path / "out") as state:
        warmup = state.get_meta(WARMUP_KEY)
    assert warmup["batch_id"] and warmup["ttl"] == "1h"
    # A tick while the warm-up runs submits nothing more.
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_INCOMPLETE and [len(b) for b in batches] == [1], err
    import time

    time.sleep(3.1)
    code, err = run_job(job, sim, monkeypatch)  # collects the warm-up, submits the rest
    assert code == EXIT_INCOMPLETE and [len(b) for b in batches] == [1, 4], err
    time.sleep(3.1)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert len(results_by_id(tmp_path / "out")) == 5


def test_warmup_state() -> None:
    rec = {"batch_id": "b", "created_at": 1000.0, "fingerprint": "f"}
    hour = 3600.0
    assert warmup_state(None, "f", None, 1000.0, hour) == "cold"
    assert warmup_state(rec, "g", "collected", 1001.0, hour) == "cold"  # another prefix
    assert warmup_state(rec, "f", "in_progress", 1001.0, hour) == "warming"
    assert warmup_state(rec, "f", "collected", 1001.0, hour) == "warm"
    assert warmup_state(rec, "f", "lost", 1001.0, hour) == "cold"
    assert warmup_state(rec, "f", "collected", 1000.0 + hour - 60, hour) == "cold"  # within the margin
