"""What cron's mail shows: plain status lines, with an ETA once there is a rate."""

from __future__ import annotations

import io
import time

import anyio
import pytest

from batcher.commands.progress import report
from batcher.pipeline import Counters
from batcher.progress import status_line


def test_status_line_counts_and_eta() -> None:
    c = Counters(ok=8, error=2, requests=10, input_tokens=1234, output_tokens=56, cost_usd=0.5)
    c.started = time.monotonic() - 10
    line = status_line(c, remaining=30)
    assert "rows ok 8" in line and "error 2" in line and "left 20" in line
    assert "tokens in 1,234 out 56" in line and "$0.5000" in line
    assert "ETA 0m20s" in line  # 10 rows in 10 s, 20 to go
    assert "ETA ?" in status_line(Counters(), remaining=5)


@pytest.mark.anyio
async def test_not_a_terminal_prints_plain_lines() -> None:
    out = io.StringIO()
    c = Counters(ok=1)
    with anyio.move_on_after(0.35):
        await report(c, 3, stream=out, every_s=0.1)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("rows ok 1 |") for line in lines)
