"""Transport "files" end to end: the real runner in this process, the simulator over real sockets.

The runner runs in-process (``batcher.commands.run.run``), not as a subprocess, so that the suite stays
fast; the simulator's ledger is the witness of what was uploaded and what the messages named.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from batcher.api.client import Client
from batcher.cli import main
from batcher.state import JobState
from tests.helpers import results_by_id, run_job

JOB = """
[input]
manifest = "manifest.jsonl"
id_column = "id"
image_column = "image"
prompt = "Question {{q}} about this picture. nonce={{id}}"

[request]
model = "claude-haiku-5-5"
max_tokens = 40

[run]
output = "out"
concurrency = {concurrency}
max_attempts = 3
image_workers = 1

[images]
transport = "files"
delete_files_at_end = {delete_at_end}
files_rpm = 6000  # the simulator has no Files budget here; the default (100) would take 12 s for 30
{extra}
"""


def make_images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        # Tiny and distinct: each a different size, so no two encode to the same bytes.
        Image.new("RGB", (40 + i, 30), (i * 8 % 256, 100, 200)).save(folder / f"img{i:03d}.jpg", quality=80)
        names.append(f"images/img{i:03d}.jpg")
    return names


def write_job(
    tmp: Path, rows: list[dict], *, concurrency: int = 16, delete_at_end: bool = False, extra: str = ""
) -> Path:
    with (tmp / "manifest.jsonl").open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    job = tmp / "job.toml"
    job.write_text(JOB.format(concurrency=concurrency, delete_at_end=str(delete_at_end).lower(), extra=extra))
    return job


def rows_over(images: list[str], questions: int, start: int = 0) -> list[dict]:
    return [
        {"id": f"r{img[-7:-4]}-q{q}", "image": img, "q": q}
        for q in range(start, start + questions)
        for img in images
    ]


def ledger(sim: Any) -> dict[str, Any]:
    return sim.sim.ledger.snapshot()  # type: ignore[no-any-return]


def file_images(sim: Any) -> int:
    return sum(1 for seen in ledger(sim)["images"] if seen["source"] == "file")


def test_300_rows_over_30_images_upload_30_and_a_rerun_uploads_nothing(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = make_images(tmp_path / "images", 30)
    job = write_job(tmp_path, rows_over(images, 10), concurrency=32)

    code, err = run_job(job, simulator, monkeypatch)
    assert code == 0, err
    uploads = ledger(simulator)["uploads_by_hash"]
    assert len(uploads) == 30 and set(uploads.values()) == {1}
    assert file_images(simulator) == 300
    assert all(seen["source"] == "file" for seen in ledger(simulator)["images"])
    assert "files: 30 uploaded" in err
    # Each image was prepared once for its ten rows.
    reused = int(err.split(" images prepared once")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert reused == 270

    out = results_by_id(tmp_path / "out")
    assert len(out) == 300 and {r["status"] for r in out.values()} == {"ok"}
    state = JobState.open(tmp_path / "out")
    try:
        by_hash = {f.sha256: f.file_id for f in state.list_files()}
        summary = state.summary()
    finally:
        state.close()
    assert set(by_hash) == set(uploads)
    assert summary.files == 30 and summary.file_bytes == ledger(simulator)["files_bytes_stored"]
    ids_used = Counter()
    for row in out.values():
        (image,) = row["images"]
        assert image["transport"] == "file" and image["file_id"] in by_hash.values()
        ids_used[image["file_id"]] += 1
    assert set(ids_used.values()) == {10}

    # The manifest grows by two more questions over the same images: nothing new is uploaded.
    write_job(tmp_path, rows_over(images, 12), concurrency=32)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 0, err
    assert ledger(simulator)["uploads_by_hash"] == uploads
    assert file_images(simulator) == 360
    assert len(results_by_id(tmp_path / "out")) == 360


def test_fifty_concurrent_rows_on_one_image_upload_it_once(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (image,) = make_images(tmp_path / "images", 1)
    job = write_job(tmp_path, rows_over([image], 50), concurrency=50, extra="files_expire_s = 7200")
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 0, err
    assert list(ledger(simulator)["uploads_by_hash"].values()) == [1]
    assert file_images(simulator) == 50
    # images.files_expire_s reaches the API, and its expiry is what the state records.
    (stored,) = simulator.sim.files.live()
    assert stored.expires_at is not None
    state = JobState.open(tmp_path / "out")
    try:
        (record,) = state.list_files()
    finally:
        state.close()
    assert record.file_id == stored.id
    assert record.expires_at == pytest.approx(stored.expires_at.timestamp(), abs=1)
    assert record.expires_at - record.uploaded_at == pytest.approx(7200, abs=5)


def test_deleted_and_expired_file_ids_are_uploaded_again_once(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = make_images(tmp_path / "images", 4)
    job = write_job(tmp_path, rows_over(images, 1), concurrency=8)
    assert run_job(job, simulator, monkeypatch)[0] == 0
    state = JobState.open(tmp_path / "out")
    try:
        before = {f.sha256: f.file_id for f in state.list_files()}
    finally:
        state.close()
    first, second = sorted(before.items())[:2]
    assert simulator.sim.files.delete(first[1])
    assert simulator.sim.files.expire(second[1])

    # Three new questions for every image: the two gone ids are met by 404s and replaced once each.
    write_job(tmp_path, rows_over(images, 4), concurrency=8)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 0, err
    uploads = ledger(simulator)["uploads_by_hash"]
    assert uploads == {h: 2 if h in (first[0], second[0]) else 1 for h in before}
    not_found = ledger(simulator)["requests"]["POST /v1/messages"].get("404", 0)
    assert not_found >= 1
    state = JobState.open(tmp_path / "out")
    try:
        after = {f.sha256: f.file_id for f in state.list_files()}
    finally:
        state.close()
    assert after[first[0]] != first[1] and after[second[0]] != second[1]
    assert all(simulator.sim.files.get(file_id) is not None for file_id in after.values())
    out = results_by_id(tmp_path / "out")
    assert len(out) == 16 and {r["status"] for r in out.values()} == {"ok"}
    # Every row shows the id that answered; one that met a 404 counts the attempts of both sends.
    assert {r["images"][0]["file_id"] for r in out.values()} >= set(after.values())
    new_rows = [r for r in out.values() if not r["id"].endswith("-q0")]
    assert sum(r["attempts"] - 1 for r in new_rows) == not_found


def test_an_upload_failure_fails_only_the_rows_that_need_that_image(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher.api import errors

    images = make_images(tmp_path / "images", 3)
    job = write_job(tmp_path, rows_over(images, 2), concurrency=8)
    real_upload = Client.upload_file

    async def refuse_img001(self: Client, data: bytes, filename: str, *args: Any, **kw: Any) -> Any:
        if filename.startswith("img001"):
            raise errors.from_response(
                400, {"error": {"type": "invalid_request_error", "message": "refused for the test"}}, {}
            )
        return await real_upload(self, data, filename, *args, **kw)

    monkeypatch.setattr(Client, "upload_file", refuse_img001)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 3, err
    out = results_by_id(tmp_path / "out")
    for row_id, row in out.items():
        if "001" in row_id:
            assert row["status"] == "error" and row["error_type"] == "upload_failed"
            message = row["error_message"]
            assert "images/img001.jpg" in message and "refused for the test" in message
        else:
            assert row["status"] == "ok", row
    assert file_images(simulator) == 4 and len(ledger(simulator)["uploads_by_hash"]) == 2


def test_an_upload_out_of_retries_leaves_its_rows_for_the_next_run(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher.api import errors

    images = make_images(tmp_path / "images", 2)
    job = write_job(tmp_path, rows_over(images, 2), concurrency=4)
    real_upload = Client.upload_file
    tries: Counter[str] = Counter()

    async def overloaded_for_img001(self: Client, data: bytes, filename: str, *args: Any, **kw: Any) -> Any:
        if filename.startswith("img001"):
            tries[filename] += 1
            # retry-after 0: the retries happen at once, so the test stays fast.
            raise errors.from_response(
                529, {"error": {"type": "overloaded_error", "message": "busy"}}, {"retry-after": "0"}
            )
        return await real_upload(self, data, filename, *args, **kw)

    monkeypatch.setattr(Client, "upload_file", overloaded_for_img001)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 75, err
    assert tries and all(n % 5 == 0 for n in tries.values())  # UPLOAD_POLICY's attempts, per flight
    out = results_by_id(tmp_path / "out")
    assert set(out) == {"r000-q0", "r000-q1"}  # the img001 rows are not final: not in the results

    monkeypatch.setattr(Client, "upload_file", real_upload)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 0, err
    out = results_by_id(tmp_path / "out")
    assert len(out) == 4 and {r["status"] for r in out.values()} == {"ok"}
    assert set(ledger(simulator)["uploads_by_hash"].values()) == {1}


def test_files_list_delete_and_delete_at_end(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = make_images(tmp_path / "images", 3)
    job = write_job(tmp_path, rows_over(images, 2))
    assert run_job(job, simulator, monkeypatch)[0] == 0
    out_dir = tmp_path / "out"
    cli = CliRunner()

    listed = cli.invoke(main, ["files", "list", str(out_dir)])
    assert listed.exit_code == 0, listed.output
    live = [f.id for f in simulator.sim.files.live()]
    assert len(live) == 3 and all(file_id in listed.output for file_id in live)
    assert "3 file(s)" in listed.output
    status = cli.invoke(main, ["status", str(out_dir)])
    stored = ledger(simulator)["files_bytes_stored"]
    assert f"{stored:,} bytes stored" in status.output

    simulator.sim.files.delete(live[0])  # gone already: counts as deleted
    deleted = cli.invoke(main, ["files", "delete", str(out_dir)])
    assert deleted.exit_code == 0, deleted.output
    assert "deleted 2 file(s)" in deleted.output and "1 were already gone" in deleted.output
    assert simulator.sim.files.live() == []
    assert "0 file(s), 0 bytes stored" in cli.invoke(main, ["files", "list", str(out_dir)]).output

    # A job that asks for it deletes its files when it has nothing left to send.
    other = tmp_path / "other"
    other.mkdir()
    (other / "images").symlink_to(tmp_path / "images")
    job = write_job(other, rows_over(images, 1), delete_at_end=True)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 0, err
    assert "files: deleted 3" in err
    assert simulator.sim.files.live() == []
    state = JobState.open(other / "out")
    try:
        assert state.list_files() == []
    finally:
        state.close()


def test_a_401_on_an_upload_stops_the_job_as_fatal(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher.api import errors

    images = make_images(tmp_path / "images", 3)
    job = write_job(tmp_path, rows_over(images, 2), concurrency=2)

    async def key_revoked(self: Client, *args: Any, **kw: Any) -> Any:
        raise errors.from_response(
            401,
            {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
            {},
        )

    monkeypatch.setattr(Client, "upload_file", key_revoked)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 1, err
    assert "authentication_error" in err
    assert sum(ledger(simulator)["requests"].get("POST /v1/messages", {}).values()) == 0
