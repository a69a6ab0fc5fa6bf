"""``batcher batches OUT [--json] [--cancel]``: a batch-mode job's Message Batches, from its state;
``--cancel`` cancels the live ones through the API (:func:`batcher.batches.cancel_batches`)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, TextIO

import anyio

from batcher.batches import cancel_batches
from batcher.exits import EXIT_CONFIG, EXIT_FATAL, EXIT_OK


def list_lines(out: Path) -> list[str]:
    """One line per batch of the job: id, status, requests, counts, age."""
    from batcher.state import JobState

    with JobState.open(out) as state:
        batches = state.list_batches()
    now = time.time()
    lines = []
    for b in batches:
        counts = " ".join(f"{k} {v:,}" for k, v in b.counts.items() if v)
        age = math.floor((now - b.created_at) / 60)
        lines.append(
            f"{b.batch_id}  {b.status:<11} {b.request_count:>7,} requests  {counts or '-'}  ({age} min ago)"
        )
    return lines


def batches_json(out: Path) -> list[dict[str, Any]]:
    from dataclasses import asdict

    from batcher.state import JobState

    with JobState.open(out) as state:
        return [asdict(b) for b in state.list_batches()]


def batches_command(out: Path, *, as_json: bool, cancel: bool, err: TextIO, stdout: TextIO) -> int:
    """``batcher batches OUT [--json] [--cancel]``; returns the exit code."""
    import json

    from batcher.state import STATE_FILE, JobState

    if not (out / STATE_FILE).is_file():
        print(f"batcher: {out}: no job state here (is it a job's output folder?)", file=err)
        return EXIT_CONFIG
    if cancel:
        from batcher.api.client import Client, MissingKeyError, settings_from_env

        try:
            key, base_url = settings_from_env()
        except MissingKeyError as exc:
            print(f"batcher: {exc}", file=err)
            return EXIT_FATAL

        async def go() -> int:
            with JobState.open(out) as state:
                async with Client(key, base_url, max_connections=4) as client:
                    return await cancel_batches(client, state, lambda line: print(line, file=err))

        done = anyio.run(go)
        print(
            f"batcher: {done} batch(es) cancelled; `batcher run` collects what they answered "
            "and sends the rest again",
            file=err,
        )
    if as_json:
        print(json.dumps(batches_json(out), sort_keys=True), file=stdout)
    else:
        lines = list_lines(out)
        print("\n".join(lines) if lines else f"{out}: no batches", file=stdout)
    return EXIT_OK
