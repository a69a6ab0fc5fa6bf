"""What flows between the stages of a run, whichever driver runs it, and the run's counters.

Every row ends in exactly one outcome: a :class:`~batcher.records.Result` (a final answer or a
final error) or a :class:`Transient` (left for the next run); a row the run stopped before
answering has none, and the next run sends it again.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from batcher.api.bodies import ImagePart
from batcher.images.prepare import PreparedImage
from batcher.records import ImageSent, Result, Row


@dataclass
class Counters:
    """The live picture of a run, for the progress display and the summary."""

    total: int = 0
    ok: int = 0
    error: int = 0
    left_for_next_run: int = 0
    errors_by_type: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    #: structured output: answers asked again because their JSON did not fit the schema
    reasks: int = 0
    in_flight: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    #: prompt cache: answers that read the prefix, answers that read or wrote it, the tokens read
    #: and written, and what the cache saved (:func:`batcher.cost.cache_saving`; a write's
    #: saving is negative)
    cache_reads: int = 0
    cache_uses: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_saved_usd: float = 0.0
    started: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None

    @property
    def finished(self) -> int:
        return self.ok + self.error + self.left_for_next_run

    def add(self, result: Result) -> None:
        if result.status == "ok":
            self.ok += 1
        else:
            self.error += 1
            self.errors_by_type[result.error_type or "error"] += 1
        for warning in result.warnings:
            self.warnings[warning] += 1
        self.spend(result)

    def spend(self, result: Result) -> None:
        """What an answer cost: counted even when the row is not finished (a re-asked answer)."""
        self.input_tokens += result.input_tokens or 0
        self.output_tokens += result.output_tokens or 0
        self.cost_usd += result.cost_usd or 0.0
        read = result.cache_read_input_tokens or 0
        written = result.cache_creation_input_tokens or 0
        self.cache_read_tokens += read
        self.cache_write_tokens += written
        self.cache_saved_usd += result.cache_saved_usd or 0.0
        if read or written:
            self.cache_uses += 1
            self.cache_reads += 1 if read else 0


def eta_s(counters: Counters, remaining: int) -> float | None:
    """Seconds left at the rate so far; None before there is a rate."""
    elapsed = time.monotonic() - counters.started
    if counters.finished == 0 or elapsed <= 0:
        return None
    return round(remaining * elapsed / counters.finished)


@dataclass
class Prepared:
    """A row ready to be asked: its image parts as they go into the body, and what the results
    row says about each image."""

    row: Row
    parts: list[ImagePart]
    sent: list[ImageSent]
    warnings: list[str]
    #: transport "files": the prepared image behind each file part (by part index), for re-uploads
    uploaded: dict[int, PreparedImage] = field(default_factory=dict)


@dataclass
class Transient:
    """A row that used up its retries in this run: left for the next one."""

    row_id: str
    error_type: str
    message: str
    attempts: int


Outcome = Result | Transient


@dataclass
class Recorded:
    """An outcome made durable already (by the online request stage): the writer only counts it."""

    outcome: Outcome


#: What reaches the writer: outcomes to record (bad rows, bad images), or ones recorded already.
Written = Outcome | Recorded
