"""How a run tells a person what happens, without printing: the seam between the library and the
commands.

The runner and both drivers hand their human-facing lines (a batch submitted, a warning, the summary)
and their progress display to a :class:`Notices` the caller gives them. ``batcher run`` gives one that
writes to stderr and stdout (:class:`batcher.commands.run.StreamNotices`); the Python API's
``progress=None`` gives :data:`QUIET`, which drops everything. Library modules never print
(``tests/test_layers.py`` holds them to it), so a notebook or another engine decides where the lines go.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from batcher.core.outcomes import Counters
    from batcher.progress import BatchProgress

#: One line for the person running the job (the CLI's stderr); what code that only speaks is given.
Say = Callable[[str], None]


class Notices(Protocol):
    """Where a run's lines and its progress display go."""

    def say(self, line: str) -> None:
        """A line for the person running the job: warnings, what a driver did, the summary."""

    def results(self, line: str) -> None:
        """The one line a run ends with, where its results are (the CLI's stdout)."""

    async def watch(
        self,
        counters: Counters,
        remaining: int | None,
        *,
        extra: Callable[[], str] | None = None,
        batch: Callable[[], BatchProgress] | None = None,
    ) -> None:
        """Show the run's progress until cancelled (or return at once: nobody is watching).

        ``extra``: a further line (the limiter's budgets); ``batch`` (batch mode): what the
        batches did, in place of the request figures."""


class _Quiet:
    """Notices that drop everything: a quiet run (the Python API without ``progress``)."""

    def say(self, line: str) -> None:
        return None

    def results(self, line: str) -> None:
        return None

    async def watch(
        self,
        counters: Counters,
        remaining: int | None,
        *,
        extra: Callable[[], str] | None = None,
        batch: Callable[[], BatchProgress] | None = None,
    ) -> None:
        return None


#: Drops every line and shows no progress.
QUIET: Final[Notices] = _Quiet()
