"""The Python API (``batcher.run``, ``batcher.estimate``, ``batcher.prepare_image``) in process,
against the simulator on loopback: the same jobs the command runs, with no printing and no exit."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

import batcher
from batcher.images.errors import ImageError
from batcher.models import load_registry
from batcher.simulator.config import SimConfig
from batcher.sink import read_results
from batcher.state import acquire_lock
from tests.images.builders import QUADRANTS, oriented_jpeg, quadrants

JOB = """
[input]
manifest = "manifest.jsonl"
id_column = "id"
image_column = "image"
prompt = "Caption it. nonce={id}"

[request]
model = "claude-haiku-5-5"
max_tokens = 30

[run]
output = "out"
"""


def write_job(tmp: Path, n: int, *, missing: int = 0) -> Path:
    """``n`` small JPEG rows, then ``missing`` rows whose image is not there."""
    (tmp / "images").mkdir()
    with (tmp / "manifest.jsonl").open("w") as fh:
        for i in range(n):
            Image.new("RGB", (300 + i, 220), (i * 20, 80, 160)).save(tmp / "images" / f"i{i}.jpg")
            fh.write(json.dumps({"id": f"r{i}", "image": f"images/i{i}.jpg"}) + "\n")
        for i in range(missing):
            fh.write(json.dumps({"id": f"gone{i}", "image": f"images/gone{i}.jpg"}) + "\n")
    (tmp / "job.toml").write_text(JOB)
    return tmp / "job.toml"


@pytest.fixture
def api_env(simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", simulator.base_url)
    return simulator


def messages_sent(sim: Any) -> int:
    counts = sim.sim.ledger.snapshot()["requests"].get("POST /v1/messages", {})
    return sum(counts.values())


def test_run_returns_the_job_counts_cost_and_exit_code_quietly(
    tmp_path: Path, api_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path, 4, missing=1)

    summary = batcher.run(job)

    assert capsys.readouterr() == ("", "")  # progress=None: nothing printed
    assert summary.exit_code == 3  # a row ended in error
    assert (summary.rows, summary.ok, summary.errors, summary.left) == (5, 4, 1, 0)
    assert summary.errors_by_type == {"not_found": 1} and not summary.done
    assert summary.out == tmp_path / "out" and summary.results == tmp_path / "out" / "results"
    assert messages_sent(api_env) == 4
    results = read_results(summary.out).to_pylist()
    assert sorted(r["id"] for r in results) == ["gone0", "r0", "r1", "r2", "r3"]
    # The cost is the job's state's; the Parquet rows, written apart, add up to it.
    assert summary.cost_usd > 0
    assert summary.cost_usd == pytest.approx(sum(r["cost_usd"] or 0.0 for r in results))
    assert summary.input_tokens == sum(r["input_tokens"] or 0 for r in results) > 0

    again = batcher.run(str(job))  # a path as str: the same job
    assert messages_sent(api_env) == 4  # nothing sent: every row is answered
    assert (again.exit_code, again.ok, again.errors, again.left) == (3, 4, 1, 0)
    assert again.cost_usd == pytest.approx(summary.cost_usd)


def test_run_with_a_progress_stream_writes_what_the_command_writes(tmp_path: Path, api_env: Any) -> None:
    job = write_job(tmp_path, 2)
    stream = io.StringIO()

    summary = batcher.run(job, progress=stream, out=tmp_path / "elsewhere")

    assert summary.exit_code == 0 and summary.done and summary.ok == 2
    assert summary.out == tmp_path / "elsewhere"
    assert f"results: {tmp_path / 'elsewhere' / 'results'}" in stream.getvalue()
    assert "2 ok" in stream.getvalue() or "ok 2" in stream.getvalue(), stream.getvalue()


def test_run_on_the_ray_engine_joins_the_notebooks_ray(tmp_path: Path, api_env: Any, local_ray: Any) -> None:
    job = write_job(tmp_path, 3, missing=1)
    stream = io.StringIO()

    summary = batcher.run(job, engine="ray", progress=stream)

    assert "2 Ray workers on a local Ray instance" in stream.getvalue()
    assert (summary.exit_code, summary.ok, summary.errors) == (3, 3, 1)
    assert summary.errors_by_type == {"not_found": 1}  # found by a worker, recorded by the driver
    assert messages_sent(api_env) == 3
    assert local_ray.is_initialized()  # the notebook's Ray is left as it was


def test_run_a_loaded_job_changed_in_memory_runs_that_job(tmp_path: Path, api_env: Any) -> None:
    path = write_job(tmp_path, 3)
    job = batcher.load_job(path)
    changed = job.model_copy(
        update={
            "input": job.input.model_copy(update={"prompt": "Caption it. nonce=mem-{id}"}),
            "run": job.run.model_copy(update={"output": "memory-out"}),
            # the file's 30 tokens cut the answer before the nonce it echoes
            "request": job.request.model_copy(update={"max_tokens": 120}),
        }
    )

    summary = batcher.run(changed)

    assert summary.exit_code == 0 and summary.ok == 3
    assert summary.out == tmp_path / "memory-out" and not (tmp_path / "out").exists()
    texts = {r["id"]: r["text"] for r in read_results(summary.out).to_pylist()}
    assert all(f"nonce=mem-{row_id}" in text for row_id, text in texts.items()), texts


def test_run_refusals_raise_job_error_with_the_exit_code(
    tmp_path: Path, simulator: Any, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = write_job(tmp_path, 2)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", simulator.base_url)
    with pytest.raises(batcher.JobError) as no_key:
        batcher.run(job)
    assert no_key.value.exit_code == 1 and "ANTHROPIC_API_KEY" in str(no_key.value)
    assert not (tmp_path / "out").exists() and messages_sent(simulator) == 0

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    broken = tmp_path / "broken.toml"
    broken.write_text(JOB.replace("max_tokens = 30", "max_tokens = 'many'"))
    with pytest.raises(batcher.JobError) as bad_job:
        batcher.run(broken)
    assert bad_job.value.exit_code == 2 and "max_tokens" in str(bad_job.value)
    with pytest.raises(batcher.JobError) as no_job:
        batcher.load_job(tmp_path / "nope.toml")
    assert no_job.value.exit_code == 2 and "nope.toml" in str(no_job.value)

    refusing = make_simulator(SimConfig(api_key="another-key"))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", refusing.base_url)
    with pytest.raises(batcher.JobError) as unauthorized:
        batcher.run(job)
    assert unauthorized.value.exit_code == 1 and "401" in str(unauthorized.value)
    assert messages_sent(refusing) == 0
    monkeypatch.setenv("ANTHROPIC_BASE_URL", simulator.base_url)

    (tmp_path / "out").mkdir()
    lock = acquire_lock(tmp_path / "out")
    try:
        with pytest.raises(batcher.JobError) as locked:
            batcher.run(job)
    finally:
        lock.release()
    assert locked.value.exit_code == 4
    assert messages_sent(simulator) == 0


def test_run_from_inside_a_running_event_loop(tmp_path: Path, api_env: Any) -> None:
    """As in a notebook: the caller's thread already runs a loop, where ``anyio.run`` refuses."""
    job = write_job(tmp_path, 3)

    async def notebook_cell() -> batcher.RunSummary:
        return batcher.run(job)

    summary = anyio.run(notebook_cell)

    assert summary.exit_code == 0 and summary.ok == 3 and messages_sent(api_env) == 3


@pytest.mark.anyio
async def test_estimate_from_inside_a_running_event_loop_counts_a_sample(
    tmp_path: Path, api_env: Any
) -> None:
    job = write_job(tmp_path, 3)
    est = batcher.estimate(job, exact_sample=2)
    assert est.sample is not None and est.sample.rows == 2 and est.sample.input_tokens_exact > 0


def test_estimate_agrees_with_the_command(tmp_path: Path) -> None:
    job = write_job(tmp_path, 4, missing=1)
    done = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "estimate", str(job), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    command = json.loads(done.stdout)

    est = batcher.estimate(job)

    assert est.to_json() == command
    assert (est.rows, est.images, est.rows_failing) == (5, 4, 1)
    assert est.input_tokens > 0 and est.output_tokens_max == 30 * 4
    assert 0 < est.cost_usd_batch < est.cost_usd_online

    loaded = batcher.load_job(job)
    more = loaded.model_copy(update={"request": loaded.request.model_copy(update={"max_tokens": 50})})
    assert batcher.estimate(more).output_tokens_max == 50 * 4


def test_estimate_refusals_raise_job_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(batcher.JobError) as missing:
        batcher.estimate(tmp_path / "nope.toml")
    assert missing.value.exit_code == 2
    job = write_job(tmp_path, 1)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(batcher.JobError) as no_key:
        batcher.estimate(job, exact_sample=1)
    assert no_key.value.exit_code == 1 and "ANTHROPIC_API_KEY" in str(no_key.value)


def test_prepare_image_turns_an_exif_rotated_jpeg_upright_at_the_native_size(tmp_path: Path) -> None:
    profile = load_registry().get("claude-haiku-5-5")
    assert profile is not None
    upright = quadrants((4000, 2000))
    path = tmp_path / "rotated.jpg"
    path.write_bytes(oriented_jpeg(upright, 6))  # stored 2000x4000, EXIF says turn it

    image = batcher.prepare_image(path, model="claude-haiku-5-5")

    assert (image.source_width, image.source_height) == (4000, 2000)
    assert image.width == profile.native_edge and abs(image.height - profile.native_edge / 2) <= 1
    assert image.media_type == "image/jpeg" and image.tokens <= profile.image_token_budget
    assert image.tokens == -(-image.width // 28) * -(-image.height // 28)
    with Image.open(io.BytesIO(image.data)) as sent:
        assert sent.size == (image.width, image.height)
        rgb = sent.convert("RGB")
        w, h = sent.size
        corners = [rgb.getpixel((x, y)) for y in (h // 4, 3 * h // 4) for x in (w // 4, 3 * w // 4)]
    for got, want in zip(corners, QUADRANTS, strict=True):  # each quadrant where it belongs upright
        assert isinstance(got, tuple)
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 12, (got, want)

    capped = batcher.prepare_image(path.read_bytes(), model="claude-haiku-5-5", max_edge=800)
    assert (capped.width, capped.height) == (800, 400)


def test_prepare_image_refuses_a_corrupt_file_and_an_unknown_model(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError) as bad:
        batcher.prepare_image(corrupt, model="claude-haiku-5-5")
    assert bad.value.error_type in {"not_an_image", "decode_error", "truncated"}
    assert "corrupt.jpg" in str(bad.value)
    with pytest.raises(batcher.JobError) as unknown:
        batcher.prepare_image(corrupt, model="claude-nope-1")
    assert unknown.value.exit_code == 2 and "claude-nope-1" in str(unknown.value)


def test_the_exported_names_are_the_api_and_estimate_is_the_function() -> None:
    from batcher.estimator import Estimate

    assert callable(batcher.estimate) and batcher.estimate.__module__ == "batcher.python_api"
    assert batcher.Estimate is Estimate
    assert {"run", "estimate", "prepare_image", "load_job", "JobError", "RunSummary"} <= set(batcher.__all__)
