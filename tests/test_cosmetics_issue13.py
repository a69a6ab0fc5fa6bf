"""Issue 13.14: what a user sees first — limits as numbers a person reads, each path named once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batcher.ratelimit import describe, short_number
from tests.test_run_e2e import batcher, good_rows, write_job


@pytest.mark.parametrize(
    ("value", "shown"),
    [(50, "50"), (8000, "8000"), (30_000, "30k"), (999_999, "1M"), (1_500_000, "1.5M"),
     (99_950_000, "100M"), (999_999_999, "1G"), (4e12, "4T")],
)
def test_short_numbers_pick_their_unit_after_rounding(value: float, shown: str) -> None:
    assert short_number(value) == shown


def test_unlimited_kinds_are_not_shown_as_a_number() -> None:
    snapshot = {"limits": {"requests": 1e9, "input-tokens": 1e9, "output-tokens": 1e9},
                "api_remaining": {"requests": 1e9, "input-tokens": 1e9, "output-tokens": 1e9},
                "source": "API", "in_flight": 0, "in_flight_limit": 8}
    assert describe(snapshot) == "no limits (API) | in flight 0/8"
    snapshot["limits"]["requests"] = 50
    snapshot["api_remaining"]["requests"] = 49
    assert describe(snapshot) == "50 rpm (API) | API left 49 req | in flight 0/8"


def test_status_after_a_run_without_limits_says_no_limits(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    # The default simulator has no limits and reports them as a billion a minute, as "unlimited".
    job = write_job(tmp_path, good_rows(tmp_path, 2))
    assert batcher(job, simulator).returncode == 0
    shown = subprocess.run([sys.executable, "-m", "batcher.cli", "status", str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.strip().startswith("limits"))
    assert "e+" not in line and "no limits (" in line, line
