"""Structured output end to end, online, through real sockets against the simulator: typed columns,
each row's own answer, refusals and cut-off answers as paid error rows, re-asks, a pydantic and an
inline schema, the checks made before anything is sent, the forced-tool fallback."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from batcher.exits import EXIT_CONFIG, EXIT_OK, EXIT_ROW_ERRORS
from batcher.simulator.config import Faults, SimConfig
from batcher.sink import read_results
from tests import helpers
from tests.helpers import (
    REPO_JOBS,
    UNLIMITED,
    capture_bodies,
    good_rows,
    messages_sent,
    results_by_id,
    run_job,
)


def structured_job(tmp: Path, rows: list[dict[str, Any]], schema: str, **kw: Any) -> Path:
    """:func:`tests.helpers.structured_job` without the tier-1 seed's pacing (the simulator here
    sets no limits, and 800 output tokens a request is six seconds of tier 1's OTPM)."""
    return helpers.structured_job(tmp, rows, schema, limits=UNLIMITED, **kw)


TAGS_TYPES = {
    "caption": pa.string(),
    "tags": pa.list_(pa.string()),
    "counts": pa.struct(
        [
            pa.field("people", pa.int64(), nullable=False),
            pa.field("animals", pa.int64(), nullable=False),
            pa.field("vehicles", pa.int64(), nullable=False),
        ]
    ),
    "has_text": pa.bool_(),
    "is_photo": pa.bool_(),
    "dominant_colour": pa.struct(
        [pa.field("name", pa.string(), nullable=False), pa.field("hex", pa.string(), nullable=False)]
    ),
    "setting": pa.string(),
    "text_content": pa.string(),
}


def tags_schema(tmp: Path) -> str:
    """jobs/schemas/tags.json copied beside the job; the job's ``schema`` value."""
    (tmp / "schemas").mkdir(exist_ok=True)
    shutil.copy(REPO_JOBS / "schemas" / "tags.json", tmp / "schemas" / "tags.json")
    return '"schemas/tags.json"'


def api_says(sim: Any, model: str, **caps: bool) -> None:
    """The simulator's (the API's) profile of ``model`` with other capabilities than batcher's table."""
    profile = sim.sim.registry.get(model)
    changed = dataclasses.replace(profile, capabilities={**profile.capabilities, **caps})
    sim.sim.registry = sim.sim.registry.with_profile(changed)


def test_tags_schema_gives_typed_columns_and_each_row_its_own_answer(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = good_rows(tmp_path, 3)
    job = structured_job(tmp_path, rows, tags_schema(tmp_path))
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_OK, err
    schema = read_results(tmp_path / "out").schema
    for name, kind in TAGS_TYPES.items():
        assert schema.field(name).type == kind, (name, schema.field(name).type)
    results = results_by_id(tmp_path / "out")
    for row in rows:
        got = results[row["id"]]
        assert got["status"] == "ok", got["error_message"]
        assert f"nonce={row['id']}" in got["caption"]
        assert json.loads(got["text"])["caption"] == got["caption"]
        assert isinstance(got["tags"], list) and isinstance(got["counts"]["people"], int)
        assert got["setting"] in ("indoor", "outdoor", "unknown")
    assert messages_sent(simulator) == 3
    assert "structured output: refusal 0, max_tokens 0, schema_mismatch 0; re-asks 0" in err


def test_refusals_are_final_typed_rows_with_their_cost(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(faults=Faults(refusal=1.0)))
    rows = good_rows(tmp_path, 2)
    code, err = run_job(structured_job(tmp_path, rows, tags_schema(tmp_path)), sim, monkeypatch)
    assert code == EXIT_ROW_ERRORS, err
    for got in results_by_id(tmp_path / "out").values():
        assert got["status"] == "error" and got["error_type"] == "refusal"
        assert got["cost_usd"] > 0 and got["output_tokens"] > 0 and got["caption"] is None
    assert messages_sent(sim) == 2
    assert "refusal 2" in err


def test_a_cut_off_answer_is_a_max_tokens_row_naming_the_limit(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = good_rows(tmp_path, 1)
    job = structured_job(tmp_path, rows, tags_schema(tmp_path), max_tokens=12)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_ROW_ERRORS, err
    got = results_by_id(tmp_path / "out")[rows[0]["id"]]
    assert got["error_type"] == "max_tokens" and got["stop_reason"] == "max_tokens"
    assert "max_tokens = 12" in got["error_message"] and "raise request.max_tokens" in got["error_message"]
    assert got["cost_usd"] > 0 and got["output_tokens"] == 12


def test_a_mismatch_is_re_asked_once_and_the_row_adds_up_both_answers(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(faults=Faults(mismatch_first=True)))
    rows = good_rows(tmp_path, 2)
    code, err = run_job(structured_job(tmp_path, rows, tags_schema(tmp_path)), sim, monkeypatch)
    assert code == EXIT_OK, err
    assert messages_sent(sim) == 4
    spent = sim.sim.ledger.snapshot()
    results = results_by_id(tmp_path / "out")
    for got in results.values():
        assert got["status"] == "ok" and got["attempts"] == 2 and got["caption"]
    # Each row's tokens (and so its cost) are both answers': together, all the simulator billed.
    assert sum(r["input_tokens"] for r in results.values()) == spent["input_tokens"]
    assert sum(r["output_tokens"] for r in results.values()) == spent["output_tokens"]
    assert "re-asks 2" in err


def test_a_mismatch_after_its_re_asks_is_final(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(faults=Faults(mismatch=1.0)))
    rows = good_rows(tmp_path, 1)
    job = structured_job(tmp_path, rows, tags_schema(tmp_path), retry_invalid=1)
    code, err = run_job(job, sim, monkeypatch)
    assert code == EXIT_ROW_ERRORS, err
    assert messages_sent(sim) == 2
    got = results_by_id(tmp_path / "out")[rows[0]["id"]]
    assert got["error_type"] == "schema_mismatch" and got["attempts"] == 2 and got["caption"] is None
    assert got["error_message"] and got["text"] and got["cost_usd"] > 0
    assert got["output_tokens"] == sim.sim.ledger.snapshot()["output_tokens"]
    # A rerun leaves the final row alone.
    assert run_job(job, sim, monkeypatch)[0] == EXIT_ROW_ERRORS
    assert messages_sent(sim) == 2


def test_an_inline_schema_and_struct_columns(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = good_rows(tmp_path, 2)
    inline = (
        '{ type = "object", properties = { caption = { type = "string" }, n = { type = "integer" } }, '
        'required = ["caption", "n"] }'
    )
    job = structured_job(tmp_path, rows, inline, columns="struct")
    bodies = capture_bodies(monkeypatch)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_OK, err
    schema = read_results(tmp_path / "out").schema
    assert schema.field("data").type == pa.struct(
        [pa.field("caption", pa.string(), nullable=False), pa.field("n", pa.int64(), nullable=False)]
    )
    fmt = bodies[-1]["output_config"]["format"]
    assert fmt["type"] == "json_schema" and fmt["schema"]["additionalProperties"] is False
    for row in rows:
        assert f"nonce={row['id']}" in results_by_id(tmp_path / "out")[row["id"]]["data"]["caption"]


def test_a_pydantic_model_in_the_jobs_folder(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tagmodel.py").write_text(
        "from pydantic import BaseModel\n\n"
        "class Size(BaseModel):\n    width: int\n    height: int\n\n"
        "class Thing(BaseModel):\n    label: str\n    confidence: float\n\n"
        "class Tags(BaseModel):\n    caption: str\n    labels: list[str]\n    size: Size\n    score: float\n"
        "    things: list[Thing]\n"
    )
    rows = good_rows(tmp_path, 1)
    code, err = run_job(structured_job(tmp_path, rows, '"tagmodel:Tags"'), simulator, monkeypatch)
    assert code == EXIT_OK, err
    schema = read_results(tmp_path / "out").schema
    assert schema.field("labels").type == pa.list_(pa.string())
    assert schema.field("score").type == pa.float64()
    thing = pa.struct(
        [pa.field("label", pa.string(), nullable=False), pa.field("confidence", pa.float64(), nullable=False)]
    )
    assert schema.field("things").type == pa.list_(thing), schema.field("things").type
    assert schema.field("size").type == pa.struct(
        [pa.field("width", pa.int64(), nullable=False), pa.field("height", pa.int64(), nullable=False)]
    )
    assert f"nonce={rows[0]['id']}" in results_by_id(tmp_path / "out")[rows[0]["id"]]["caption"]


@pytest.mark.parametrize("name", ["status", "kind"])
def test_a_colliding_property_is_refused_before_anything_is_sent(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    rows = good_rows(tmp_path, 1)
    inline = f'{{ type = "object", properties = {{ {name} = {{ type = "string" }} }} }}'
    code, err = run_job(structured_job(tmp_path, rows, inline), simulator, monkeypatch)
    assert code == EXIT_CONFIG, err
    assert len(err.strip().splitlines()) == 1 and "output.schema" in err and repr(name) in err, err
    assert simulator.sim.ledger.snapshot()["requests"] == {}
    assert not (tmp_path / "out").exists()


def test_a_schema_that_cannot_be_loaded_is_one_line_and_nothing_is_sent(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = good_rows(tmp_path, 1)
    code, err = run_job(structured_job(tmp_path, rows, '"schemas/none.json"'), simulator, monkeypatch)
    assert code == EXIT_CONFIG, err
    assert len(err.strip().splitlines()) == 1 and "output.schema" in err, err
    assert simulator.sim.ledger.snapshot()["requests"] == {}


def test_a_model_without_structured_outputs_gets_a_forced_tool_and_the_same_columns(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_says(simulator, "claude-haiku-5-5", structured_outputs=False)
    rows = good_rows(tmp_path, 2)
    bodies = capture_bodies(monkeypatch)
    code, err = run_job(structured_job(tmp_path, rows, tags_schema(tmp_path)), simulator, monkeypatch)
    assert code == EXIT_OK, err
    assert err.count("forced tool") == 1, err
    body = bodies[-1]
    assert body["tool_choice"] == {"type": "tool", "name": "record_answer"}
    assert body["tools"][0]["name"] == "record_answer" and "format" not in body.get("output_config", {})
    schema = read_results(tmp_path / "out").schema
    for name, kind in TAGS_TYPES.items():
        assert schema.field(name).type == kind
    for row in rows:
        got = results_by_id(tmp_path / "out")[row["id"]]
        assert got["status"] == "ok" and f"nonce={row['id']}" in got["caption"]


def test_a_model_with_neither_is_refused_naming_it(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_says(simulator, "claude-sonnet-5-5", structured_outputs=False)
    rows = good_rows(tmp_path, 1)
    job = structured_job(tmp_path, rows, tags_schema(tmp_path), model="claude-sonnet-5-5")
    code, err = run_job(job, simulator, monkeypatch)
    assert code == EXIT_CONFIG, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.strip().endswith(
        f"{job}: request.model: claude-sonnet-5-5 supports neither structured outputs nor "
        "forced tool use; output.schema cannot be enforced"
    ), err
    assert messages_sent(simulator) == 0 and not (tmp_path / "out").exists()


def test_the_parts_schema_is_the_same_across_runs_answered_or_not(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(SimConfig(faults=Faults(refusal=1.0)))
    rows = good_rows(tmp_path, 2)
    job = structured_job(tmp_path, rows[:1], tags_schema(tmp_path))
    assert run_job(job, sim, monkeypatch)[0] == EXIT_ROW_ERRORS
    ok_sim = make_simulator()
    structured_job(tmp_path, rows, tags_schema(tmp_path))
    assert run_job(job, ok_sim, monkeypatch)[0] == EXIT_ROW_ERRORS
    import pyarrow.parquet as pq

    parts = sorted((tmp_path / "out" / "results").glob("*.parquet"))
    assert parts
    schemas = {str(pq.read_schema(p)) for p in parts}
    assert len(schemas) == 1
    for name, kind in TAGS_TYPES.items():
        assert pq.read_schema(parts[0]).field(name).type == kind


def test_the_shipped_tags_job_runs_against_the_simulator(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jobs/tags.toml as shipped (its manifest and output redirected into tmp_path)."""
    from tests.helpers import make_images, write_jsonl

    names = make_images(tmp_path / "images", 2)
    write_jsonl(
        tmp_path / "manifest.jsonl",
        [{"id": f"t{i}", "image": n, "category": "street"} for i, n in enumerate(names)],
    )
    text = (REPO_JOBS / "tags.toml").read_text()
    text = text.replace('"../data/manifest.csv"', '"manifest.jsonl"').replace('"../out/{job}"', '"out"')
    (tmp_path / "tags.toml").write_text(text)
    tags_schema(tmp_path)
    code, err = run_job(tmp_path / "tags.toml", simulator, monkeypatch)
    assert code == EXIT_OK, err
    table = read_results(tmp_path / "out")
    for name, kind in TAGS_TYPES.items():
        assert table.schema.field(name).type == kind
    assert table.num_rows == 2


def test_status_and_the_python_api_count_the_typed_errors_and_the_re_asks(
    tmp_path: Path, make_simulator: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import batcher
    from batcher.commands.status import show_status

    sim = make_simulator(SimConfig(faults=Faults(mismatch=1.0)))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.base_url)
    rows = good_rows(tmp_path, 2)
    summary = batcher.run(structured_job(tmp_path, rows, tags_schema(tmp_path), retry_invalid=2))
    assert summary.exit_code == EXIT_ROW_ERRORS
    assert summary.errors_by_type == {"schema_mismatch": 2} and summary.reasks == 4
    assert messages_sent(sim) == 6
    assert show_status(tmp_path / "out") == 0
    shown = capsys.readouterr().out
    assert "schema_mismatch" in shown and "re-asks    4 answers asked again" in shown
    assert show_status(tmp_path / "out", as_json=True) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["reasks"] == 4 and as_json["errors_by_type"] == {"schema_mismatch": 2}
