"""What a person (or cron's mail) sees while a job runs: the progress display of ``batcher run``.

On a terminal a live rich display; elsewhere a plain line every few seconds. Both read the same
:class:`~batcher.core.outcomes.Counters` and the lines of :mod:`batcher.progress`, and both end with
the same summary (which the runner says through its notices). A view: it writes to the stream it is
given, and only commands start it (through :class:`batcher.commands.run.StreamNotices`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

import anyio

from batcher.core.outcomes import Counters
from batcher.progress import BatchProgress, batch_status_line, request_rate, status_line


async def report(
    counters: Counters,
    remaining: int | None,
    *,
    stream: TextIO | None = None,
    every_s: float = 5.0,
    extra: Callable[[], str] = lambda: "",
    batch: Callable[[], BatchProgress] | None = None,
) -> None:
    """Run until cancelled: a live display on a terminal, else a plain line every ``every_s``.

    ``batch`` (batch mode) replaces the request figures with what the batches did.
    """
    stream = stream or sys.stderr
    if stream.isatty():
        await _live(counters, remaining, stream, extra, batch)
        return
    while True:
        await anyio.sleep(every_s)
        line = (
            batch_status_line(counters, remaining, batch())
            if batch is not None
            else status_line(counters, remaining, extra())
        )
        print(line, file=stream, flush=True)


async def _live(
    counters: Counters,
    remaining: int | None,
    stream: TextIO,
    extra: Callable[[], str],
    batch: Callable[[], BatchProgress] | None,
) -> None:
    """A bar (rows done of remaining, ETA) with the live numbers on a line of their own below."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.text import Text

    console = Console(file=stream)
    # A batch ends when the API says so: no time-remaining guess from a rate for it.
    columns = [TextColumn("[bold]rows"), BarColumn(), MofNCompleteColumn()]
    if batch is None:
        columns.append(TimeRemainingColumn())
    bar = Progress(*columns, console=console)
    task = bar.add_task("rows", total=remaining)
    with Live(console=console, transient=True, refresh_per_second=4) as live:
        while True:
            bar.update(task, completed=counters.finished)
            if batch is not None:
                info = (
                    f"ok {counters.ok:,}  error {counters.error:,}  |  {batch().describe()}  |  "
                    f"tokens {counters.input_tokens:,} in / {counters.output_tokens:,} out  |  "
                    f"${counters.cost_usd:.4f}"
                )
            else:
                info = (
                    f"ok {counters.ok:,}  error {counters.error:,}  |  "
                    f"{request_rate(counters):.1f} req/s  |  "
                    f"in flight {counters.in_flight}  |  429s {counters.rate_limited}  |  "
                    f"tokens {counters.input_tokens:,} in / {counters.output_tokens:,} out  |  "
                    f"${counters.cost_usd:.4f}"
                )
            more = extra()
            live.update(Group(bar, Text(info), *([Text(more)] if more else [])))
            await anyio.sleep(0.25)
