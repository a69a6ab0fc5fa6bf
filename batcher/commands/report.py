"""``batcher report OUT``: one self-contained HTML page over a job's results
(:func:`batcher.report.build.write_report`), its one line on stdout, every refusal one line on
stderr; returns the exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from batcher.errors import JobError
from batcher.exits import EXIT_INCOMPLETE, EXIT_OK

if TYPE_CHECKING:
    from batcher.report.build import ReportStats


def size_text(n: int) -> str:
    """A file's size as a person reads it: ``812 bytes``, ``4.2 KB``, ``4.2 MB`` (powers of 1000)."""
    if n < 1000:
        return f"{n:,} bytes"
    if n < 1_000_000:
        return f"{n / 1000:.1f} KB"
    return f"{n / 1_000_000:.1f} MB"


def report_line(stats: ReportStats) -> str:
    """``report: OUT/report.html (2,000 cards of 1,000,000 results: a sample; 4.2 MB)``."""
    sample = ": a sample" if stats.sampled else ""
    return (
        f"report: {stats.path} ({stats.cards:,} cards of {stats.results:,} results{sample}; "
        f"{size_text(stats.bytes)})"
    )


def report(
    out: Path,
    dest: Path | None = None,
    *,
    max_cards: int = 2000,
    thumb_px: int = 256,
    open_page: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``batcher report``: write the page, print its line, open it in a browser if asked."""
    from batcher.report.build import ReportOptions, write_report

    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    try:
        stats = write_report(out, dest, ReportOptions(max_cards=max_cards, thumb_px=thumb_px))
    except JobError as exc:
        print(f"batcher: {exc}", file=stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("batcher: interrupted; no report written", file=stderr)
        return EXIT_INCOMPLETE
    print(report_line(stats), file=stdout)
    if open_page:
        import webbrowser

        if not webbrowser.open(stats.path.resolve().as_uri()):
            print(f"batcher: no browser to open {stats.path} with", file=stderr)
    return EXIT_OK
