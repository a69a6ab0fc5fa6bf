"""The lines a person (or cron's mail) reads about a running job, as pure functions of the
:class:`~batcher.core.outcomes.Counters`: the plain status line and its batch-mode form. Nothing here
writes: the runner hands the lines to its :class:`~batcher.core.notices.Notices`, and the live display
(:mod:`batcher.commands.progress`) shows them.

Batch mode sends no request of its own per row, so it shows no request rate, in-flight count or
429s (a rate would really be "rows put into batches a second", hundreds while nothing is answered)
and no ETA (a batch ends when the API says so): it shows rows submitted, rows collected and the
live batches instead (:class:`BatchProgress`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from batcher.core.outcomes import Counters, eta_s


def request_rate(counters: Counters) -> float:
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
        f"{request_rate(counters):.1f} req/s",
        f"in flight {counters.in_flight}",
        f"429s {counters.rate_limited}",
        f"tokens in {counters.input_tokens:,} out {counters.output_tokens:,}",
        f"${counters.cost_usd:.4f}",
        f"ETA {_fmt_s(eta)}" if eta is not None else "ETA ?",
    ]
    if counters.warnings:
        parts.append("warnings " + ", ".join(f"{k} {n:,}" for k, n in counters.warnings.most_common()))
    return " | ".join(parts) + (f" | {extra}" if extra else "")


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """What a batch-mode run has done with the Message Batches API so far."""

    submitted_rows: int = 0
    submitted_batches: int = 0
    #: result lines this run recorded (answers, errors, and requests to send again)
    collected_rows: int = 0
    collected_batches: int = 0
    live_batches: int = 0
    #: requests in the live batches, whichever run submitted them
    live_rows: int = 0

    def describe(self) -> str:
        return (
            f"submitted {self.submitted_rows:,} rows in {_n(self.submitted_batches, 'batch')} | "
            f"collected {self.collected_rows:,} rows from {_n(self.collected_batches, 'batch')} | "
            f"live {_n(self.live_batches, 'batch')} ({self.live_rows:,} rows)"
        )


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "es" if noun.endswith("ch") else "s")


def batch_status_line(counters: Counters, remaining: int | None, batches: BatchProgress) -> str:
    """:func:`status_line` for batch mode: rows done, failed, left; the batches; tokens; spend."""
    left = None if remaining is None else max(0, remaining - counters.finished)
    parts = [
        f"rows ok {counters.ok:,}",
        f"error {counters.error:,}",
        f"left {left:,}" if left is not None else "left ?",
        batches.describe(),
        f"tokens in {counters.input_tokens:,} out {counters.output_tokens:,}",
        f"${counters.cost_usd:.4f}",
    ]
    if counters.warnings:
        parts.append("warnings " + ", ".join(f"{k} {n:,}" for k, n in counters.warnings.most_common()))
    return " | ".join(parts)


def _fmt_s(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def cache_figures(reads: int, uses: int, saved_usd: float) -> str:
    """The prompt cache in a few words: ``39 of 40 requests read the prefix (97%); saved $0.41``.
    ``uses``: answers that read or wrote the cached prefix (the hit rate's denominator; a request
    whose prefix the API did not cache, e.g. one under the model's minimum, is not among them).
    The rate is rounded down, so 100% means every one."""
    rate = reads * 100 // uses if uses else 0
    noun = "request" if uses == 1 else "requests"
    if saved_usd >= 0:
        money = f"saved {_usd(saved_usd)}"
    else:
        money = f"cost {_usd(-saved_usd)} more than it saved (the writes outweigh the reads)"
    return f"{reads:,} of {uses:,} {noun} read the prefix ({rate}%); {money}"


def cache_line(counters: Counters) -> str | None:
    """The run's closing line about the prompt cache; None when no answer of the run used it."""
    if not counters.cache_uses:
        return None
    return "batcher: cache: " + cache_figures(
        counters.cache_reads, counters.cache_uses, counters.cache_saved_usd
    )


def _usd(dollars: float) -> str:
    return f"${dollars:,.2f}" if dollars >= 1 else f"${dollars:.4f}"
