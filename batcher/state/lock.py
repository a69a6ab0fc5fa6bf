"""The single-runner lock: a non-blocking ``flock`` on ``OUT/.lock``.

The kernel drops the lock when the process dies, even by ``kill -9``. Take it *before* opening the
state so a second runner touches nothing. The lock is on an open file description: a child made by
``fork`` shares it, so preprocessing pools should use the ``spawn``/``forkserver`` start method, or
an orphaned worker keeps the job locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from batcher.state.errors import AlreadyRunning

LOCK_FILE = ".lock"


class RunLock:
    """An exclusive ``flock`` on ``OUT/.lock``, held until :meth:`release` or process death."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_lock(out_dir: str | Path) -> RunLock:
    """Take the job's single-runner lock, or raise :class:`AlreadyRunning` at once."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise AlreadyRunning(out, pid) from None
    # The pid is only a message for whoever is refused; the flock is what excludes.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunLock(path, fd)


def lock_holder(out_dir: str | Path) -> int | None:
    """The pid of the ``batcher run`` holding this OUT's lock now, or None (no run is live).

    Read-only: on Linux ``/proc/locks`` is matched against the lock file's inode and the pid the
    holder wrote, so a run starting meanwhile is never refused. Elsewhere a shared lock is tried
    and dropped at once.
    """
    path = Path(out_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        pid = _read_pid(fd)
        held = _held_per_proc_locks(os.fstat(fd).st_ino, pid)
        if held is None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                held = True
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                held = False
        return (pid or -1) if held else None
    finally:
        os.close(fd)


def _held_per_proc_locks(inode: int, pid: int | None) -> bool | None:
    """Whether /proc/locks lists a FLOCK by ``pid`` on ``inode``; None where it cannot be read."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    if pid is None:
        return None
    for line in text.splitlines():
        fields = line.split()
        if "FLOCK" not in fields or "->" in fields:
            continue
        at = fields.index("FLOCK")
        try:
            holder, where = int(fields[at + 3]), fields[at + 4]
        except (IndexError, ValueError):
            continue
        if holder == pid and where.rsplit(":", 1)[-1] == str(inode):
            return True
    return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
