"""``batcher run``: the run (:mod:`batcher.runner`) with its lines on stderr, the results line on
stdout, and every refusal one line on stderr; returns the exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TextIO

from batcher.exits import EXIT_INCOMPLETE
from batcher.runner import RunRefused, RunRequest, execute

if TYPE_CHECKING:
    from batcher.core.outcomes import Counters
    from batcher.progress import BatchProgress


@dataclass(frozen=True, slots=True)
class StreamNotices:
    """:class:`~batcher.core.notices.Notices` on text streams: lines and progress to ``err``, the
    results line to ``out`` (the command's stderr and stdout; the Python API gives one stream)."""

    err: TextIO
    out: TextIO

    def say(self, line: str) -> None:
        # Flushed: a line may say what a run does for minutes (a batch submitted, then waited on).
        print(line, file=self.err, flush=True)

    def results(self, line: str) -> None:
        print(line, file=self.out)

    async def watch(
        self,
        counters: Counters,
        remaining: int | None,
        *,
        extra: Callable[[], str] | None = None,
        batch: Callable[[], BatchProgress] | None = None,
    ) -> None:
        from batcher.commands.progress import report

        await report(counters, remaining, stream=self.err, extra=extra or (lambda: ""), batch=batch)


def run(request: RunRequest, *, err: TextIO | None = None, out: TextIO | None = None) -> int:
    """``batcher run``: :func:`batcher.runner.execute` with its notices on ``err`` (stderr) and
    ``out`` (stdout); every refusal one line on ``err``. Returns the exit code."""
    err = err if err is not None else sys.stderr
    out = out if out is not None else sys.stdout
    request = replace(request, notices=StreamNotices(err, out))
    try:
        return execute(request)
    except RunRefused as exc:
        print(f"batcher: {exc}", file=err)
        return exc.code
    except KeyboardInterrupt:
        # Outside the pipeline (reading the manifest, merging parts): nothing half-done is kept.
        print("batcher: interrupted; `batcher run` again resumes", file=err)
        return EXIT_INCOMPLETE
