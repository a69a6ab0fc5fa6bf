"""What a person (or cron's mail) sees while a job runs.

On a terminal a live rich display; elsewhere a plain line every few seconds. Both read the same
:class:`~batcher.pipeline.Counters`, and both end with the same summary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import anyio

from batcher.pipeline import Counters, eta_s


def _rate(counters: Counters) -> float:
    elapsed = max(1e-9, time.monotonic() - counters.started)
    return counters.requests / elapsed


def status_line(counters: Counters, remaining: int | None, extra: str = "") -> str:
    """One plain line: rows done, failed, left; requests a second; tokens; spend; ETA."""
    left = None if remaining is None else max(0, remaining - counters.finished)
    eta = None if left is None else eta_s(counters, left)
    parts = [
        f"rows ok {counters.ok:,}",
        f"error {counters.error:,}",
        f"left {left:,}" if left is not None else "left ?",
        f"{_rate(counters):.1f} req/s",
        f"in flight {counters.in_flight}",
        f"429s {counters.rate_limited}",
        f"tokens in {counters.input_tokens:,} out {counters.output_tokens:,}",
        f"${counters.cost_usd:.4f}",
        f"ETA {_fmt_s(eta)}" if eta is not None else "ETA ?",
    ]
    if counters.warnings:
        parts.append("warnings " + ", ".join(f"{k} {n:,}" for k, n in counters.warnings.most_common()))
    return " | ".join(parts) + (f" | {extra}" if extra else "")


def _fmt_s(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


async def report(counters: Counters, remaining: int | None, *, stream: TextIO | None = None,
                 every_s: float = 5.0, extra: Callable[[], str] = lambda: "") -> None:
    """Run until cancelled: a live display on a terminal, else a plain line every ``every_s``."""
    stream = stream or sys.stderr
    if stream.isatty():
        await _live(counters, remaining, stream, extra)
        return
    while True:
        await anyio.sleep(every_s)
        print(status_line(counters, remaining, extra()), file=stream, flush=True)


async def _live(counters: Counters, remaining: int | None, stream: TextIO,
                extra: Callable[[], str]) -> None:
    """A bar (rows done of remaining, ETA) with the live numbers on a line of their own below."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.text import Text

    console = Console(file=stream)
    bar = Progress(TextColumn("[bold]rows"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console)
    task = bar.add_task("rows", total=remaining)
    with Live(console=console, transient=True, refresh_per_second=4) as live:
        while True:
            bar.update(task, completed=counters.finished)
            info = (f"ok {counters.ok:,}  error {counters.error:,}  |  {_rate(counters):.1f} req/s  |  "
                    f"in flight {counters.in_flight}  |  429s {counters.rate_limited}  |  "
                    f"tokens {counters.input_tokens:,} in / {counters.output_tokens:,} out  |  "
                    f"${counters.cost_usd:.4f}")
            more = extra()
            live.update(Group(bar, Text(info), *([Text(more)] if more else [])))
            await anyio.sleep(0.25)
