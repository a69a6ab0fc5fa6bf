"""Issue 13, defect 3: a NaN or an infinity in a Parquet or JSONL manifest round-trips as null (README:
"Non-finite numbers"), the state's result JSON is always strict JSON, and `batcher status` reads a
state that an older batcher filled with ``NaN``."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from batcher.manifest import open_manifest
from batcher.records import Result
from tests.helpers import JOB, batcher, good_rows, messages_sent, results_by_id

NON_FINITE = [math.nan, math.inf, -math.inf]


def _refuse_constants(name: str) -> None:
    raise AssertionError(f"{name} in JSON")


def strict_loads(text: str) -> dict:
    return json.loads(text, parse_constant=_refuse_constants)


def test_result_json_is_strict_with_non_finite_numbers_as_null() -> None:
    result = Result(
        id="a",
        status="ok",
        fields={"score": math.nan, "n": [1.5, math.inf], "ok": 2.5},
        latency_s=-math.inf,
        cost_usd=0.25,
    )
    data = strict_loads(result.to_json())
    assert data["fields"] == {"score": None, "n": [1.5, None], "ok": 2.5}
    assert data["latency_s"] is None and data["cost_usd"] == 0.25
    back = Result.from_json(result.to_json())
    assert back.fields["score"] is None and back.fields["ok"] == 2.5
    plain = Result(id="b", status="ok", fields={"x": 1.0})
    assert Result.from_json(plain.to_json()) == plain


def _write_parquet(path: Path, rows: list[dict], scores: list[float]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": [r["id"] for r in rows],
            "image": [r["image"] for r in rows],
            "kind": [r["kind"] for r in rows],
            "score": pa.array(scores, pa.float64()),
        }
    )
    pq.write_table(table, path)


def _write_jsonl(path: Path, rows: list[dict], scores: list[float]) -> None:
    # json.dumps writes NaN / Infinity / -Infinity: what Python and pandas put in JSONL files
    path.write_text("".join(json.dumps({**r, "score": s}) + "\n" for r, s in zip(rows, scores, strict=True)))


def test_manifest_fields_hold_null_for_non_finite_numbers(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "image": "a.jpg", "kind": "photo"} for i in range(4)]
    scores = [*NON_FINITE, 0.5]
    _write_parquet(tmp_path / "m.parquet", rows, scores)
    _write_jsonl(tmp_path / "m.jsonl", rows, scores)
    for name in ("m.parquet", "m.jsonl"):
        m = open_manifest(
            tmp_path / name,
            id_column="id",
            image_column="image",
            prompt_column=None,
            prompt_template="A {kind}",
        )
        got = [r.fields["score"] for r in m.rows()]
        assert got == [None, None, None, 0.5], name
    # a template over a NaN cell is that row's template_error, as a missing one is
    m = open_manifest(
        tmp_path / "m.parquet",
        id_column="id",
        image_column="image",
        prompt_column=None,
        prompt_template="Score {score}",
    )
    errors = [r.error.error_type if r.error else None for r in m.rows()]
    assert errors == ["template_error", None, None, None]


def _job(tmp: Path, manifest: str) -> Path:
    job = tmp / "job.toml"
    job.write_text(
        JOB.format(concurrency=4, max_attempts=4, part_rows=5000).replace(
            'manifest = "manifest.jsonl"', f'manifest = "{manifest}"'
        )
    )
    return job


def _status(out: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", "status", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_a_run_over_non_finite_numbers_finishes_and_status_reads_it(
    tmp_path: Path,
    simulator,  # type: ignore[no-untyped-def]
    kind: str,
) -> None:
    rows = good_rows(tmp_path, 5)
    scores = [*NON_FINITE, 0.5, 2.0]
    writer = _write_parquet if kind == "parquet" else _write_jsonl
    writer(tmp_path / f"manifest.{kind}", rows, scores)
    job = _job(tmp_path, f"manifest.{kind}")

    done = batcher(job, simulator)
    assert done.returncode == 0, done.stderr
    results = results_by_id(tmp_path / "out")
    assert {k: v["status"] for k, v in results.items()} == {r["id"]: "ok" for r in rows}
    expected = [None, None, None, 0.5, 2.0] if kind == "parquet" else [None, None, None, "0.5", "2.0"]
    assert [results[r["id"]]["score"] for r in rows] == expected
    with sqlite3.connect(tmp_path / "out" / "state.sqlite") as db:
        for (text,) in db.execute("SELECT result_json FROM results"):
            strict_loads(text)

    status = _status(tmp_path / "out")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["rows"] == 5
    again = batcher(job, simulator)
    assert again.returncode == 0, again.stderr
    assert messages_sent(simulator) == 5


def test_status_reads_a_state_an_older_batcher_filled_with_nan(tmp_path: Path, simulator) -> None:  # type: ignore[no-untyped-def]
    rows = good_rows(tmp_path, 3)
    _write_jsonl(tmp_path / "manifest.jsonl", rows, [1.0, 2.0, 3.0])
    job = _job(tmp_path, "manifest.jsonl")
    assert batcher(job, simulator).returncode == 0
    state = tmp_path / "out" / "state.sqlite"
    with sqlite3.connect(state) as db:
        # what batcher wrote before: Python's json.dumps of a NaN cell
        db.execute("""UPDATE results SET result_json = replace(result_json, '"score":1.0', '"score":NaN')""")
        assert db.execute("SELECT count(*) FROM results WHERE result_json LIKE '%NaN%'").fetchone()[0] == 1
    status = _status(tmp_path / "out")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["rows"] == 3
    assert batcher(job, simulator).returncode == 0
