"""``batcher status OUT``: what a job's output folder holds, read from its state."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from batcher.exits import EXIT_CONFIG, EXIT_FATAL, EXIT_OK


def show_status(out: Path, *, as_json: bool = False) -> int:
    from batcher.sink import REMOVED_DIR, REMOVED_FILE
    from batcher.state import STATE_FILE, JobState, StateError, lock_holder

    if not (out / STATE_FILE).is_file():
        print(f"batcher: {out}: no job state here (is it a job's output folder?)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        state = JobState.open(out)
    except StateError as exc:
        print(f"batcher: {exc}", file=sys.stderr)
        return EXIT_FATAL
    try:
        summary = state.summary()
        rate_limits = state.get_meta("rate_limits")
    finally:
        state.close()
    running = lock_holder(out)
    if rate_limits and running is None:
        # The last snapshot of a run that is over (or was killed): nothing is in flight now.
        rate_limits = {**rate_limits, "in_flight": 0}
    if as_json:
        print(json.dumps({**asdict(summary), "running_pid": running}, sort_keys=True))
        return EXIT_OK
    s = summary
    live = "" if running is None else f"; running now (pid {running})" if running > 0 else "; running now"
    print(f"{out}: {s.rows:,} rows in the manifest, {s.runs} run(s){live}")
    for status, n in sorted(s.by_status.items()):
        print(f"  {status:<10} {n:>10,}")
    if s.errors_by_type:
        print("  errors by type:")
        for kind, n in sorted(s.errors_by_type.items(), key=lambda kv: -kv[1]):
            print(f"    {kind:<22} {n:>8,}")
    if s.reasks:
        print(f"  re-asks    {s.reasks:,} answers asked again because their JSON did not fit output.schema")
    if s.warnings:
        shown = ", ".join(f"{kind} {n:,}" for kind, n in s.warnings.items())
        print(f"  warnings   {shown} (per row in the results' warnings column)")
    print(
        f"  tokens     in {s.input_tokens:,}  out {s.output_tokens:,}  "
        f"cache read {s.cache_read_input_tokens:,}  cache write {s.cache_creation_input_tokens:,}"
    )
    print(f"  spend      ${s.cost_usd:.4f}")
    if s.cache_uses:
        from batcher.progress import cache_figures

        print(f"  cache      {cache_figures(s.cache_reads, s.cache_uses, s.cache_saved_usd)}")
    print(f"  time       {s.time_spent_s:,.1f} s of runs, {s.request_time_s:,.1f} s of requests")
    if rate_limits:
        from batcher.ratelimit import describe

        print(
            f"  limits     {describe(rate_limits)}; {rate_limits.get('rate_limited', 0)} 429(s) "
            "in the last run"
        )
    print(f"  results    {s.exported_rows:,} rows in {s.parts} Parquet part(s) under {out / 'results'}")
    if s.files:
        print(f"  files      {s.files:,} uploaded, {s.file_bytes:,} bytes stored")
    if s.changed_rows:
        print(
            f"  changed    {s.changed_rows:,} answered rows whose prompt, image or request settings "
            "changed since (`batcher run --redo-changed` resends them)"
        )
    if s.removed_rows:
        print(
            f"  removed    {s.removed_rows:,} rows no longer in the manifest, not in results/ "
            f"({s.removed_answers:,} answers kept apart in {out / REMOVED_DIR / REMOVED_FILE})"
        )
    return EXIT_OK
