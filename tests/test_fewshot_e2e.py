"""Few-shot examples and the prompt cache end to end, online, through real sockets against the
simulator: the shipped jobs/fewshot.toml over a small manifest sends its examples as turns before
each row's own, with one breakpoint at the end of them; a later row reads the prefix the first
wrote; a bad example image stops the run before any request, naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batcher.exits import EXIT_CONFIG, EXIT_OK
from tests.helpers import (
    REPO_JOBS,
    capture_bodies,
    fewshot_copy,
    good_rows,
    messages_sent,
    results_by_id,
    run_job,
)


def test_examples_go_as_turns_with_one_breakpoint_and_later_rows_read_the_prefix(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch, check: Any
) -> None:
    rows = good_rows(tmp_path, 3)
    bodies = capture_bodies(monkeypatch)
    code, err = run_job(fewshot_copy(tmp_path, rows, unlimited=True), simulator, monkeypatch)
    assert code == EXIT_OK, err
    assert "batcher: cache: breakpoint at the end of the examples" in err
    assert len(bodies) == 3
    style = (REPO_JOBS / "prompts" / "style.md").read_text()
    for body in bodies:
        check(body, "CreateMessageParams")
        messages = body["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]
        assert body["system"] == style  # no breakpoint there: it is at the end of the examples
        marked = [
            (n, block)
            for n, message in enumerate(messages)
            for block in message["content"]
            if "cache_control" in block
        ]
        assert marked == [(5, {**messages[5]["content"][-1]})]
        assert marked[0][1]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
        assert messages[1]["content"][0]["text"].startswith("An illustration of a red bicycle")
        assert [b["type"] for b in messages[0]["content"]] == ["image", "text"]
        assert messages[0]["content"][1]["text"] == "Write alt text for this image."
    # The examples' images are the same bytes in every request (prepared once a run).
    first = [m["content"][0]["source"]["data"] for m in bodies[0]["messages"][:6:2]]
    for body in bodies[1:]:
        assert [m["content"][0]["source"]["data"] for m in body["messages"][:6:2]] == first
    results = results_by_id(tmp_path / "out")
    ordered = [results[row["id"]] for row in rows]
    written = [r["cache_creation_input_tokens"] or 0 for r in ordered]
    read = [r["cache_read_input_tokens"] or 0 for r in ordered]
    assert sum(1 for w in written if w > 0) == 1, (written, read)
    assert sum(1 for r in read if r > 0) == 2, (written, read)
    assert max(read) == max(written) > 3000


def test_cache_off_sends_no_breakpoint(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = good_rows(tmp_path, 2)
    job = fewshot_copy(tmp_path, rows, unlimited=True)
    job.write_text(job.read_text().replace('mode = "auto"', 'mode = "off"'))
    bodies = capture_bodies(monkeypatch)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_OK, err
    assert "batcher: cache: off ([cache] mode)" in err
    assert len(bodies) == 2 and "cache_control" not in str(bodies)
    for got in results_by_id(tmp_path / "out").values():
        assert not got["cache_read_input_tokens"] and not got["cache_creation_input_tokens"]


def test_a_prefix_under_the_models_minimum_gets_no_breakpoint_and_nothing_is_cached(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short system prompt and no examples: well under Haiku 5.5's 512-token minimum.
    rows = good_rows(tmp_path, 2)
    job = fewshot_copy(tmp_path, rows, unlimited=True)
    text = job.read_text()
    text = text.split("[[request.examples]]")[0] + "\n[cache]\n" + text.split("[cache]")[1]
    text = text.replace('system_file = "prompts/style.md"', 'system = "Write one factual sentence."')
    job.write_text(text)
    bodies = capture_bodies(monkeypatch)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_OK, err
    assert "under claude-haiku-5-5's minimum of 512 (nothing would be cached)" in err
    assert len(bodies) == 2 and "cache_control" not in str(bodies)
    assert [m["role"] for m in bodies[0]["messages"]] == ["user"]


def test_a_bad_example_image_stops_the_run_before_any_request(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = good_rows(tmp_path, 2)
    job = fewshot_copy(tmp_path, rows, unlimited=True)
    (tmp_path / "examples" / "kitchen.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_CONFIG, err
    lines = [line for line in err.splitlines() if "request.examples" in line]
    assert len(lines) == 1 and "request.examples[1].image" in lines[0], err
    assert messages_sent(simulator) == 0


def test_batch_mode_sends_the_examples_with_the_one_hour_breakpoint_in_every_request(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher.api.client import Client
    from batcher.simulator.config import BatchClock, SimConfig

    sim = make_simulator(SimConfig(batches=BatchClock(duration_s=0.1)))
    rows = good_rows(tmp_path, 3)
    job = fewshot_copy(tmp_path, rows, unlimited=True)
    job.write_text(job.read_text().replace('mode = "online"', 'mode = "batch"'))
    sent: list[dict[str, Any]] = []
    create = Client.create_batch

    async def create_batch(self: Client, requests: list[dict[str, Any]], betas: Any = ()) -> Any:
        sent.extend(requests)
        return await create(self, requests, betas)

    monkeypatch.setattr(Client, "create_batch", create_batch)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_OK, err
    assert "batcher: cache: breakpoint at the end of the examples" in err and "TTL 1h" in err
    ids = {row["id"] for row in rows}
    assert ids <= {r["custom_id"] for r in sent}
    for request in sent:
        messages = request["params"]["messages"]
        assert len(messages) == 7
        assert messages[5]["content"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
        assert str(request["params"]).count("cache_control") == 1
    assert messages_sent(sim) == 0
