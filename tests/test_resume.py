"""The manifest sync in a process of its own (batcher.resume.BackgroundSync): it syncs every row on
its own connection, hands its report or its error (duplicate ids included) to the run, stops when
asked, says so when it dies, and never outlives the run's process."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from batcher import resume
from batcher.manifest import Manifest, open_manifest
from batcher.state import ContentHasher, DuplicateIds, JobState, StateError

pytestmark = pytest.mark.anyio


def write_csv(path: Path, ids: list[str]) -> Manifest:
    with path.open("w") as out:
        out.write("id,image,title\n")
        for row_id in ids:
            out.write(f"{row_id},images/{row_id}.jpg,item {row_id}\n")
    return open_manifest(
        path, id_column="id", image_column="image", prompt_column=None, prompt_template="Caption {title}."
    )


def start_sync(out: Path, manifest: Manifest, *, chunk: int = 500) -> tuple[JobState, resume.BackgroundSync]:
    state = JobState.open(out)
    sync = resume.BackgroundSync(
        state, manifest.rows, state.begin_pass(), ContentHasher(b"s"), "fp", chunk=chunk, in_process=True
    )
    return state, sync.start()


async def first_chunk(sync: resume.BackgroundSync) -> None:
    """Wait until the sync process has committed its first chunk (so it is mid-way, not done)."""
    with anyio.fail_after(60):
        while sync.gate.synced < 0:
            await anyio.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_duplicate_ids_cross_the_process_boundary_whole() -> None:
    exc = DuplicateIds(["a", "b"], 5, complete=False, read=1000)
    back = pickle.loads(pickle.dumps(exc))
    assert isinstance(back, DuplicateIds) and str(back) == str(exc)
    assert (back.ids, back.count) == (["a", "b"], 5)


async def test_a_process_syncs_every_row_and_hands_over_its_report(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", [f"r{i}" for i in range(1200)])
    state, sync = start_sync(tmp_path / "out", manifest, chunk=100)
    try:
        await sync.settled()
        assert sync._process is not None and sync._process.pid != os.getpid()
        report = sync.gate.report
        assert report is not None and (report.rows, report.new_rows, report.duplicates) == (1200, 1200, [])
        assert sync.gate.synced == 1199
        # What the process wrote is in the state the run reads: every row, and the fingerprint.
        assert state.count_remaining(False, False) == 1200
        assert state.synced_fingerprint() == "fp"
    finally:
        sync.stop()
        state.close()


async def test_duplicate_ids_found_by_the_process_reach_the_run(tmp_path: Path) -> None:
    ids = [f"r{i}" for i in range(300)]
    ids[250] = "r7"
    state, sync = start_sync(tmp_path / "out", write_csv(tmp_path / "m.csv", ids), chunk=50)
    try:
        with pytest.raises(DuplicateIds, match="duplicate ids: r7"):
            await sync.settled()
        assert state.synced_fingerprint() is None
    finally:
        sync.stop()
        state.close()


async def test_a_sync_process_that_dies_is_an_error_naming_it_not_a_hang(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", [f"r{i}" for i in range(200_000)])
    state, sync = start_sync(tmp_path / "out", manifest, chunk=50)
    try:
        await first_chunk(sync)
        assert sync._process is not None and sync._process.pid is not None
        os.kill(sync._process.pid, signal.SIGKILL)
        with anyio.fail_after(30), pytest.raises(StateError, match=r"killed by SIGKILL.*run the job again"):
            await sync.settled()
    finally:
        sync.stop()
        state.close()


async def test_stop_ends_the_process_after_its_chunk_and_leaves_no_fingerprint(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", [f"r{i}" for i in range(200_000)])
    state, sync = start_sync(tmp_path / "out", manifest, chunk=50)
    try:
        await first_chunk(sync)
        sync.stop()
        assert sync._process is not None and not sync._process.is_alive()
        assert sync._process.exitcode == 0  # it stopped when asked: not killed after STOP_WAIT_S
        assert state.count_remaining(False, False) < 200_000
        assert state.synced_fingerprint() is None
    finally:
        state.close()


def test_the_sync_process_dies_with_the_run(tmp_path: Path) -> None:
    """kill -9 of the run: its sync stops too (it would otherwise write beside the next run)."""
    write_csv(tmp_path / "m.csv", [f"r{i}" for i in range(300_000)])
    script = textwrap.dedent(f"""
        import time
        from tests.test_resume import start_sync, open_manifest
        from pathlib import Path
        if __name__ == "__main__":
            m = open_manifest(Path({str(tmp_path / "m.csv")!r}), id_column="id", image_column="image",
                              prompt_column=None, prompt_template="Caption {{title}}.")
            state, sync = start_sync(Path({str(tmp_path / "out")!r}), m, chunk=50)
            while sync.gate.synced < 0:
                time.sleep(0.01)
            print(sync._process.pid, flush=True)
            time.sleep(600)
    """)
    run = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent
    )
    try:
        assert run.stdout is not None
        child = int(run.stdout.readline())
        assert alive(child)
        run.kill()
        run.wait()
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        run.kill()
