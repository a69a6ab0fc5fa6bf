"""Issue 13, defect 6: anything that is not a regular file (a FIFO, /dev/zero or /dev/urandom
through a symlink, a directory) is refused before it is read, with one error type, ``not_a_file``,
in `batcher run`, `batcher prepare` and `batcher estimate` alike. Before: a FIFO hung each of them
for ever, and the devices were read up to the 3 GiB memory bound."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from batcher.cli import main
from batcher.images.errors import NotAFile
from batcher.images.prepare import prepare_file, probe_size
from batcher.models import load_registry
from tests.helpers import batcher, estimate_json, good_rows, messages_sent, results_by_id, write_job

NOT_FILES = ("fifo", "zero", "urandom", "folder")


def make_not_files(folder: Path) -> dict[str, Path]:
    """A FIFO nobody writes to, symlinks to /dev/zero and /dev/urandom, and a directory."""
    paths = {name: folder / f"{name}.jpg" for name in NOT_FILES}
    os.mkfifo(paths["fifo"])
    paths["zero"].symlink_to("/dev/zero")
    paths["urandom"].symlink_to("/dev/urandom")
    paths["folder"].mkdir()
    return paths


@contextlib.contextmanager
def unblocking(fifo: Path):  # type: ignore[no-untyped-def]
    """On the way out, EOF to any reader a failing test left blocked on ``fifo``."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("name", NOT_FILES)
def test_prepare_and_probe_refuse_before_reading(tmp_path: Path, name: str) -> None:
    path = make_not_files(tmp_path)[name]
    haiku = load_registry().get("claude-haiku-5-5")
    assert haiku is not None
    with unblocking(tmp_path / "fifo.jpg"):
        for attempt in (lambda: prepare_file(path, haiku), lambda: probe_size(path)):
            with pytest.raises(NotAFile, match="not a regular file") as info:
                attempt()
            assert info.value.error_type == "not_a_file" and str(path) in str(info.value)
    kinds = {
        "fifo": "a named pipe (FIFO)",
        "zero": "a character device",
        "urandom": "a character device",
        "folder": "a directory",
    }
    assert kinds[name] in str(info.value)


def test_run_records_not_a_file_and_finishes(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    paths = make_not_files(tmp_path)
    rows = good_rows(tmp_path, 2) + [
        {"id": name, "image": str(path), "kind": "photo"} for name, path in paths.items()
    ]
    job = write_job(tmp_path, rows)
    with unblocking(paths["fifo"]):
        done = batcher(job, simulator)
    assert done.returncode == 3, done.stderr  # finished, some rows in error
    got = results_by_id(tmp_path / "out")
    assert {got[name]["error_type"] for name in NOT_FILES} == {"not_a_file"}
    assert got["row-000"]["status"] == "ok" and got["row-001"]["status"] == "ok"
    assert messages_sent(simulator) == 2


def test_prepare_command_reports_not_a_file(tmp_path: Path) -> None:
    paths = make_not_files(tmp_path)
    with unblocking(paths["fifo"]):
        result = CliRunner().invoke(
            main,
            [
                "prepare",
                "--json",
                "--workers",
                "1",
                *(str(paths[name]) for name in ("fifo", "zero", "urandom")),
            ],
        )
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 3
    assert [row["error_type"] for row in rows] == ["not_a_file"] * 3


def test_estimate_counts_not_a_file_and_does_not_hang(tmp_path: Path) -> None:
    paths = make_not_files(tmp_path)
    rows = good_rows(tmp_path, 1) + [
        {"id": name, "image": str(path), "kind": "photo"} for name, path in paths.items()
    ]
    job = write_job(tmp_path, rows)
    with unblocking(paths["fifo"]):
        done = estimate_json(job)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["failures"] == {"not_a_file": len(NOT_FILES)}
