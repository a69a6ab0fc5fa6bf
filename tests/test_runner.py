"""``batcher run`` in process: a disk that fails mid-run is one clear line, exit 1, nothing lost."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from batcher.exits import EXIT_FATAL, EXIT_OK
from batcher.sink import Sink
from batcher.state import JobState
from tests.helpers import messages_sent, run_job

JOB = """
[input]
manifest = "manifest.jsonl"
image_column = "image"
prompt = "Caption it. nonce={id}"

[request]
model = "claude-haiku-5-5"
max_tokens = 30

[run]
output = "out"
part_rows = 2
"""


def write_job(tmp: Path, n: int) -> Path:
    (tmp / "images").mkdir()
    with (tmp / "manifest.jsonl").open("w") as fh:
        for i in range(n):
            Image.new("RGB", (300, 220), (i * 20, 80, 160)).save(tmp / "images" / f"i{i}.jpg")
            fh.write(json.dumps({"id": f"r{i}", "image": f"images/i{i}.jpg"}) + "\n")
    (tmp / "job.toml").write_text(JOB)
    return tmp / "job.toml"


def test_a_full_disk_mid_run_stops_with_one_line_and_keeps_every_answer(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = write_job(tmp_path, 8)
    real_export = Sink.export

    def disk_full(self: Sink, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Sink, "export", disk_full)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_FATAL
    [line] = [ln for ln in err.splitlines() if "No space left" in ln]
    assert line.startswith("batcher: stopped: OSError") and "Traceback" not in err
    with JobState.open(tmp_path / "out") as state:
        answered = state.summary().by_status.get("ok", 0)
    assert answered >= 1  # recorded in the state before the export failed
    sent = messages_sent(simulator)

    # The disk has room again: the rerun exports what was answered and sends only the rest.
    monkeypatch.setattr(Sink, "export", real_export)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_OK, err
    after = messages_sent(simulator)
    assert after - sent == 8 - answered
