"""``batcher report``: a real run's folder made into the page (the real renderer), its one line,
its refusals; ``batcher run`` naming the command; ``batcher.make_report`` from Python."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import batcher
from batcher.cli import main
from batcher.commands.report import report_line, size_text
from batcher.commands.run import run
from batcher.report.build import ReportStats
from batcher.runner import RunRequest
from batcher.simulator.server import RunningSimulator
from tests.helpers import good_rows, result_row, write_job, write_results


def _report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", "report", *args], capture_output=True, text=True, timeout=120
    )


def test_report_line_and_sizes() -> None:
    stats = ReportStats(Path("OUT/report.html"), 2000, 1_000_000, True, 4_200_000, 3.0)
    assert (
        report_line(stats) == "report: OUT/report.html (2,000 cards of 1,000,000 results: a sample; 4.2 MB)"
    )
    whole = ReportStats(Path("r.html"), 12, 12, False, 81_234, 1.0)
    assert report_line(whole) == "report: r.html (12 cards of 12 results; 81.2 KB)"
    assert size_text(999) == "999 bytes"


def test_a_run_names_the_command_and_its_folder_makes_the_page(
    tmp_path: Path, simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = good_rows(tmp_path, 6)
    rows.append({"id": "row-bad", "image": "images/missing.jpg", "kind": "photo"})
    job = write_job(tmp_path, rows)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", simulator.base_url)
    stdout = io.StringIO()
    code = run(RunRequest(job_path=job), err=io.StringIO(), out=stdout)
    out = tmp_path / "out"
    assert code == 3
    assert stdout.getvalue().splitlines() == [f"results: {out / 'results'}", f"report: batcher report {out}"]

    made = _report(str(out))
    assert made.returncode == 0, made.stderr
    assert made.stderr == ""
    assert re.fullmatch(
        rf"report: {re.escape(str(out / 'report.html'))} \(7 cards of 7 results; [\d.]+ KB\)\n", made.stdout
    )
    page = (out / "report.html").read_text()
    statuses = re.findall(r'<article class="card[^"]*" [^>]*data-row-id="([^"]+)" data-status="(\w+)"', page)
    assert sorted(statuses) == sorted([(r["id"], "ok") for r in rows[:6]] + [("row-bad", "error")])
    assert page.count('src="data:image/jpeg;base64,') >= 6  # a thumbnail per readable image
    assert "not_found" in page  # the missing image says why in its place


def test_dash_o_and_max_cards_make_a_sample(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_results(out, [result_row(i, status="error" if i % 10 == 0 else "ok") for i in range(50)])
    dest = tmp_path / "elsewhere.html"
    made = _report(str(out), "-o", str(dest), "--max-cards", "8", "--thumb-px", "64")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"report: {dest} (8 cards of 50 results: a sample; ")
    page = dest.read_text()
    assert len(re.findall(r'data-status="error"', page)) == 5  # every error row first
    assert page.count("data-row-id=") == 8
    assert not (out / "report.html").exists()


@pytest.mark.parametrize("which", ["missing", "empty"])
def test_a_folder_that_is_not_a_job_is_one_line_and_exit_2(tmp_path: Path, which: str) -> None:
    folder = tmp_path / "nothing" if which == "missing" else tmp_path
    made = _report(str(folder))
    assert made.returncode == 2
    assert made.stdout == ""
    assert made.stderr == f"batcher: {folder}: no job state here (is it a job's output folder?)\n"
    assert not (folder / "report.html").exists()


def test_a_page_that_cannot_be_written_is_one_line_and_exit_1(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_results(out, [result_row(0)])
    made = _report(str(out), "-o", str(tmp_path / "no" / "such" / "dir" / "r.html"))
    assert made.returncode == 1
    assert made.stderr.startswith("batcher: ") and "cannot write the report" in made.stderr
    assert len(made.stderr.splitlines()) == 1


def test_open_opens_the_written_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    write_results(out, [result_row(0)])
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    result = CliRunner().invoke(main, ["report", str(out), "--open"])
    assert result.exit_code == 0, result.output
    assert opened == [(out / "report.html").resolve().as_uri()]


def test_python_api_make_report_returns_the_stats(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_results(out, [result_row(i) for i in range(3)])
    stats = batcher.make_report(out, workers=1)
    assert isinstance(stats, batcher.ReportStats)
    assert (stats.path, stats.cards, stats.results, stats.sampled) == (out / "report.html", 3, 3, False)
    assert stats.bytes == (out / "report.html").stat().st_size
    with pytest.raises(batcher.JobError) as refused:
        batcher.make_report(tmp_path / "nope")
    assert refused.value.exit_code == 2


@pytest.mark.anyio
async def test_python_api_make_report_from_inside_a_running_event_loop(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_results(out, [result_row(i) for i in range(2)])
    stats = batcher.make_report(out, workers=1)  # a notebook cell: the loop is this thread's
    assert stats.cards == 2 and (out / "report.html").is_file()
