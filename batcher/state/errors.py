"""The job state's errors: all under :class:`StateError`."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from batcher.errors import JobError
from batcher.exits import EXIT_ALREADY_RUNNING, EXIT_CONFIG


class StateError(JobError, RuntimeError):
    """The job state cannot be used (wrong schema version, a corrupt file, an id collision)."""


class DuplicateIds(StateError):
    """The manifest holds an id more than once (a sync beside the pipeline stops at the first)."""

    exit_code = EXIT_CONFIG

    def __init__(self, ids: list[str], count: int, *, complete: bool, read: int) -> None:
        names = ", ".join(ids)
        more = f" and {count - len(ids)} more" if count > len(ids) else ""
        where = "" if complete else f" (found within the first {read:,} rows; more may follow)"
        super().__init__(f"duplicate ids: {names}{more}{where}")
        self.ids = ids
        self.count = count
        self._where = (complete, read)

    def __reduce__(self) -> tuple[partial[DuplicateIds], tuple[list[str], int]]:
        # Pickled whole: a sync in a process of its own hands this to the run (batcher.resume).
        complete, read = self._where
        return (partial(DuplicateIds, complete=complete, read=read), (self.ids, self.count))


class AlreadyRunning(StateError):
    """Another ``batcher run`` holds this job's lock."""

    exit_code = EXIT_ALREADY_RUNNING

    def __init__(self, out_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"{out_dir} is in use by another batcher run ({holder}); wait for it to finish or stop it first"
        )
        self.pid = pid


def collision_error(first: str, second: str, custom_id: str) -> StateError:
    """Two row ids that map to one Message Batches custom_id."""
    return StateError(
        f"row ids {first!r} and {second!r} both map to the Message Batches custom_id "
        f"{custom_id!r}; rename one of them"
    )
