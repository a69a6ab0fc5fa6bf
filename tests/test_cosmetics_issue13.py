"""Issue 13.14: what a user sees first — limits as numbers a person reads, each path named once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batcher.ratelimit import describe, short_number
from tests.helpers import batcher, good_rows, write_job


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (50, "50"),
        (8000, "8000"),
        (30_000, "30k"),
        (999_999, "1M"),
        (1_500_000, "1.5M"),
        (99_950_000, "100M"),
        (999_999_999, "1G"),
        (4e12, "4T"),
    ],
)
def test_short_numbers_pick_their_unit_after_rounding(value: float, shown: str) -> None:
    assert short_number(value) == shown


def test_unlimited_kinds_are_not_shown_as_a_number() -> None:
    snapshot = {
        "limits": {"requests": 1e9, "input-tokens": 1e9, "output-tokens": 1e9},
        "api_remaining": {"requests": 1e9, "input-tokens": 1e9, "output-tokens": 1e9},
        "source": "API",
        "in_flight": 0,
        "in_flight_limit": 8,
    }
    assert describe(snapshot) == "no limits (API) | in flight 0/8"
    snapshot["limits"]["requests"] = 50
    snapshot["api_remaining"]["requests"] = 49
    assert describe(snapshot) == "50 rpm (API) | API left 49 req | in flight 0/8"


def test_status_after_a_run_without_limits_says_no_limits(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    # The default simulator has no limits and reports them as a billion a minute, as "unlimited".
    job = write_job(tmp_path, good_rows(tmp_path, 2))
    assert batcher(job, simulator).returncode == 0
    shown = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "status", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.strip().startswith("limits"))
    assert "e+" not in line and "no limits (" in line, line


# --- each path named once --------------------------------------------------------------------------


def test_a_row_whose_image_fails_names_the_path_once(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import results_by_id

    rows = good_rows(tmp_path, 1)
    (tmp_path / "images" / "empty.jpg").write_bytes(b"")
    (tmp_path / "images" / "text.png").write_text("not a picture\n")
    (tmp_path / "images" / "folder.jpg").mkdir()
    bad = ["nope.jpg", "empty.jpg", "text.png", "folder.jpg"]
    rows += [{"id": name, "image": f"images/{name}", "kind": "photo"} for name in bad]
    done = batcher(write_job(tmp_path, rows), simulator)
    assert done.returncode == 3, done.stderr
    results = results_by_id(tmp_path / "out")
    for name in bad:
        message = results[name]["error_message"]
        assert message.startswith(f"image 1 ({tmp_path / 'images' / name}): "), message
        assert message.count(name) == 1, message


def test_prepare_names_a_failed_file_once(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from batcher.cli import main

    (tmp_path / "text.png").write_text("not a picture\n")
    result = CliRunner().invoke(main, ["prepare", str(tmp_path / "text.png"), str(tmp_path / "zz.jpg")])
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == 2
    for line in fails:
        assert line.count(str(tmp_path)) == 1, line


def test_an_output_folder_that_is_a_file_is_named_once(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    job = write_job(tmp_path, good_rows(tmp_path, 1))
    (tmp_path / "out").write_text("in the way\n")
    done = batcher(job, simulator)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].count(str(tmp_path / "out")) == 1, lines
    assert "cannot use the output folder" in lines[0]


@pytest.mark.parametrize(
    ("errno_name", "filename", "shown"),
    [
        ("EEXIST", "/o", "File exists"),
        ("EACCES", "/o/.lock", "Permission denied: /o/.lock"),
        ("EIO", None, "Input/output error"),
    ],
)
def test_os_reason_names_only_another_file(errno_name: str, filename: str | None, shown: str) -> None:
    import errno
    import os

    from batcher.runner import os_reason

    code = getattr(errno, errno_name)
    assert os_reason(OSError(code, os.strerror(code), filename), Path("/o")) == shown
