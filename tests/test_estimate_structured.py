"""``batcher estimate`` of a job with ``[output]``: the schema's tokens in every row's input (a
stated estimate, the same on the row and the column paths), said a row, and measured with
``--exact-sample`` (the bodies counted carry ``output_config``)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batcher.api.bodies import structured_params
from batcher.estimator import estimate_job, format_estimate, job_structured, load
from batcher.tokens import SCHEMA_FRAMING, estimate_schema_tokens
from tests.helpers import REPO_JOBS, estimate_json, good_rows, structured_job


def schema_job(tmp: Path, rows: list[dict[str, Any]], **kw: Any) -> Path:
    (tmp / "schemas").mkdir(exist_ok=True)
    (tmp / "schemas" / "tags.json").write_text((REPO_JOBS / "schemas" / "tags.json").read_text())
    return structured_job(tmp, rows, '"schemas/tags.json"', **kw)


def without_output(job: Path) -> Path:
    plain = job.with_name("plain.toml")
    plain.write_text(job.read_text().split("[output]")[0])
    return plain


def as_csv(job: Path, rows: list[dict[str, Any]]) -> Path:
    with (job.parent / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "kind"])
        writer.writeheader()
        writer.writerows(rows)
    out = job.with_name("csv.toml")
    out.write_text(job.read_text().replace("manifest.jsonl", "manifest.csv"))
    return out


def test_the_schema_adds_its_tokens_to_every_row_on_both_paths(tmp_path: Path) -> None:
    rows = good_rows(tmp_path, 4)
    job_path = schema_job(tmp_path, rows)
    job, profile = load(job_path)
    output = job_structured(job, profile)
    assert output is not None and output.mode == "format"
    per_row = estimate_schema_tokens(structured_params(output.request), profile)
    assert per_row > SCHEMA_FRAMING
    est = estimate_job(job, profile)
    plain = estimate_job(*load(without_output(job_path)))
    assert est.structured_mode == "format" and est.schema_tokens_per_row == per_row
    assert est.text_tokens == plain.text_tokens + 4 * per_row
    assert est.image_tokens == plain.image_tokens and est.cost_usd_online > plain.cost_usd_online
    chunked = estimate_job(*load(as_csv(job_path, rows)))
    assert chunked.input_tokens == est.input_tokens
    line = f"structured output: ~{per_row:,} input tokens a row for the schema (estimate)"
    assert line in format_estimate(est) and "structured output" not in format_estimate(plain)


def test_the_json_says_what_the_schema_adds(tmp_path: Path) -> None:
    done = estimate_json(schema_job(tmp_path, good_rows(tmp_path, 2)))
    assert done.returncode == 0, done.stderr
    est = json.loads(done.stdout)
    assert est["structured_mode"] == "format" and est["schema_tokens_per_row"] > SCHEMA_FRAMING
    text = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "estimate", str(tmp_path / "job.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0 and "input tokens a row for the schema (estimate)" in text.stdout


def test_a_model_without_structured_outputs_is_estimated_with_the_tool_and_one_with_neither_refused(
    tmp_path: Path,
) -> None:
    rows = good_rows(tmp_path, 1)
    extra = (
        "\n[models.claude-haiku-5-5]\ncapabilities = { image_input = true, batch = true, "
        "structured_outputs = false, thinking = true, effort = true }\n"
    )
    job_path = schema_job(tmp_path, rows)
    job_path.write_text(job_path.read_text() + extra)
    est = estimate_job(*load(job_path))
    assert est.structured_mode == "tool" and est.schema_tokens_per_row > SCHEMA_FRAMING
    assert "forced tool" in format_estimate(est)
    job_path.write_text(job_path.read_text() + "forced_tool_use = false\n")
    from batcher.config import ConfigError

    with pytest.raises(ConfigError, match="supports neither structured outputs nor forced tool use"):
        estimate_job(*load(job_path))


def test_an_exact_sample_counts_bodies_that_carry_the_schema(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher.api.client import Client

    counted: list[dict[str, Any]] = []
    count = Client.count_tokens

    async def count_tokens(self: Client, body: Any, betas: Any = ()) -> int:
        counted.append(body)
        return await count(self, body, betas)

    monkeypatch.setattr(Client, "count_tokens", count_tokens)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", simulator.base_url)
    rows = good_rows(tmp_path, 3)
    job, profile = load(schema_job(tmp_path, rows))
    est = estimate_job(job, profile, exact_sample_rows=2)
    assert est.sample is not None and est.sample.rows == 2 and len(counted) == 2
    for body in counted:
        assert body["output_config"]["format"]["type"] == "json_schema"
    plain_job, _ = load(without_output(tmp_path / "job.toml"))
    plain = estimate_job(plain_job, profile, exact_sample_rows=2)
    assert plain.sample is not None
    # The API counted the schema too.
    assert est.sample.input_tokens_exact > plain.sample.input_tokens_exact
