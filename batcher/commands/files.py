"""``batcher files list|delete OUT``: a job's Files API uploads, from its state; ``delete`` deletes
them through the API (:func:`batcher.files.delete_files`) and forgets them."""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from batcher import facts
from batcher.api import errors
from batcher.exits import EXIT_ALREADY_RUNNING, EXIT_CONFIG, EXIT_FATAL, EXIT_OK, EXIT_ROW_ERRORS
from batcher.files import DeleteReport, FilesBudget, FilesError, FileStore, delete_files
from batcher.state import FileRecord

if TYPE_CHECKING:
    from batcher.state import JobState


def _when(moment: float | None) -> str:
    if moment is None:
        return "never"
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _open_state(out: Path) -> JobState:
    """The job state of ``out``, or FilesError (there is none, or it cannot be read)."""
    from batcher.state import STATE_FILE, JobState, StateError

    if not (out / STATE_FILE).is_file():
        raise FilesError(f"{out}: no job state here (is it a job's output folder?)")
    try:
        return JobState.open(out)
    except StateError as exc:
        raise FilesError(str(exc)) from None


def list_lines(records: Sequence[FileRecord], now: float) -> list[str]:
    """The human listing of a job's uploads, newest last, with a total."""
    lines = [f"{'file id':<40} {'bytes':>12}  {'uploaded':<20}  {'expires':<20}  sha256"]
    for r in records:
        expires = _when(r.expires_at) + (
            " (expired)" if r.expires_at is not None and r.expires_at <= now else ""
        )
        lines.append(
            f"{r.file_id:<40} {r.bytes:>12,}  {_when(r.uploaded_at):<20}  {expires:<20}  {r.sha256[:16]}"
        )
    total = sum(r.bytes for r in records)
    lines.append(f"{len(records):,} file(s), {total:,} bytes stored")
    return lines


def list_command(out: Path, *, as_json: bool = False) -> int:
    """``batcher files list OUT``: the job's uploads as the state records them. Returns the exit code."""
    import json
    from dataclasses import asdict

    try:
        state = _open_state(out)
    except FilesError as exc:
        print(f"batcher: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        records = state.list_files()
    finally:
        state.close()
    if as_json:
        for r in records:
            print(json.dumps(asdict(r), sort_keys=True))
    else:
        print("\n".join(list_lines(records, time.time())))
    return EXIT_OK


def delete_command(out: Path, *, beta: str = facts.FILES_BETA, rpm: float = float(facts.FILES_RPM)) -> int:
    """``batcher files delete OUT``: delete the job's uploads through the API (key and endpoint from
    ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL) and forget them. Exit 0, 3 when some could not be
    deleted, 1 fatal (no key, auth), 2 no job here, 4 a run holds the job."""
    from batcher.api.client import MissingKeyError, settings_from_env
    from batcher.state import AlreadyRunning, acquire_lock

    try:
        key, base_url = settings_from_env()
    except MissingKeyError as exc:
        print(f"batcher: {exc}", file=sys.stderr)
        return EXIT_FATAL
    try:
        state = _open_state(out)
    except FilesError as exc:
        print(f"batcher: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        # Not while a run uses the files: it would only upload them again.
        lock = acquire_lock(out)
    except AlreadyRunning as exc:
        state.close()
        print(f"batcher: {exc}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    try:
        report = anyio.run(_delete_all, key, base_url, state, beta, rpm)
    except errors.APIError as exc:
        print(f"batcher: stopped: {exc}", file=sys.stderr)
        return EXIT_FATAL
    finally:
        state.close()
        lock.release()
    print(
        f"deleted {report.deleted:,} file(s) ({report.bytes:,} bytes); "
        f"{report.already_gone:,} were already gone"
    )
    for file_id, why in report.failed:
        print(f"batcher: could not delete {file_id}: {why}", file=sys.stderr)
    return EXIT_ROW_ERRORS if report.failed else EXIT_OK


async def _delete_all(key: str, base_url: str, state: FileStore, beta: str, rpm: float) -> DeleteReport:
    from batcher.api.client import Client

    async with Client(key, base_url, max_connections=4) as client:
        return await delete_files(client, state, state.list_files(), beta=beta, budget=FilesBudget(rpm=rpm))
