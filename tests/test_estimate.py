"""``batcher estimate``: per-row arithmetic, and the estimate against what the simulator then counts."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from batcher.api.bodies import ImagePart, RequestSettings, messages_body
from batcher.commands.run import run
from batcher.demo import write_demo
from batcher.estimator import (
    Sample,
    count_body,
    estimate_job,
    load,
    row_tokens,
    run_time_s,
    sent_image_tokens,
)
from batcher.exits import EXIT_OK
from batcher.images.sizing import ImageOptions
from batcher.models import load_registry
from batcher.runner import RunRequest
from batcher.simulator import tokens as sim_tokens
from batcher.simulator.config import SimConfig
from batcher.tokens import estimate_text_tokens
from tests.helpers import estimate_json

REGISTRY = load_registry()
HAIKU = REGISTRY["claude-haiku-5-5"]
OPUS = REGISTRY["claude-opus-4-8"]


PROSE = (
    "Write a one-line caption for this photograph. Name the main subject, the setting and the "
    "light, and leave out anything you cannot see in the picture itself. "
) * 12


@pytest.mark.parametrize("profile", [HAIKU, OPUS, REGISTRY["claude-haiku-4-5"]], ids=lambda p: p.id)
def test_on_prose_the_text_estimate_is_near_the_simulators_tokenizer(profile) -> None:  # type: ignore[no-untyped-def]
    # the simulator has its own tokenizer (tests/simulator/test_tokens.py), not the client's rule:
    # the byte estimate is near it on prose (a BPE tokenizer takes ~4.5 bytes a token there, the
    # estimate 4), and not equal to it
    f100 = sim_tokens.factor_hundredths(profile)
    estimated, counted = estimate_text_tokens(PROSE, profile), sim_tokens.text_tokens(PROSE, f100)
    assert estimated != counted
    assert abs(estimated - counted) <= 0.2 * counted
    assert estimate_text_tokens("", profile) == sim_tokens.text_tokens("", f100) == 0


@pytest.mark.parametrize(
    ("size", "tokens"),
    [
        ((200, 200), 64),
        ((1000, 1000), 1296),
        ((1092, 1092), 1521),
        ((1075, 1520), 33 * 47),
        ((3840, 2160), 52 * 30),
    ],
)
def test_image_tokens_by_the_patch_rule_after_sizing(size: tuple[int, int], tokens: int) -> None:
    # the guide's examples: 1075x1520 is sent at 924x1307, 3840x2160 at 1456x819
    assert sent_image_tokens(HAIKU, ImageOptions(), size, 1) == tokens


def test_an_image_of_unknown_size_counts_at_the_budget_or_the_jobs_cap() -> None:
    assert sent_image_tokens(OPUS, ImageOptions(), None, 1) == OPUS.image_token_budget
    assert sent_image_tokens(OPUS, ImageOptions(max_image_tokens=500), None, 1) == 500


def test_a_job_cap_lowers_the_tokens() -> None:
    assert sent_image_tokens(OPUS, ImageOptions(max_image_tokens=400), (3840, 2160), 1) <= 400
    assert sent_image_tokens(OPUS, ImageOptions(), (3840, 2160), 1) > 4000


def test_row_tokens_count_labels_system_and_framing() -> None:
    settings = RequestSettings(max_tokens=50, system="Be brief.")
    one = row_tokens(HAIKU, settings, "What is this?", [100])
    two = row_tokens(HAIKU, settings, "What is this?", [100, 100])
    assert one.image == 100 and two.image == 200
    # a second image adds its block framing and, with two, both "Image N:" labels appear
    labels = 2 * estimate_text_tokens("Image 1:", HAIKU)
    assert two.text - one.text == 3 + labels


def test_the_time_is_set_by_the_tightest_limit() -> None:
    assert run_time_s(600, 10_000, 6_000, rpm=60, itpm=None, otpm=None) == 600.0
    assert run_time_s(600, 10_000_000, 6_000, rpm=60, itpm=100_000, otpm=None) == 6000.0
    assert run_time_s(600, 1, 1, rpm=None, itpm=None, otpm=None) is None


def test_the_count_body_drops_what_count_tokens_refuses() -> None:
    settings = RequestSettings(max_tokens=50, system="s", stop_sequences=["END"])
    body = messages_body(HAIKU, settings, [ImagePart("url", "http://x/y.png")], "hi")
    counted = count_body(body)
    assert "max_tokens" not in counted and "stop_sequences" not in counted
    assert counted["system"] == "s" and counted["messages"] == body["messages"]


def test_a_sample_measures_the_text_error() -> None:
    assert Sample(
        rows=2, input_tokens_exact=1100, input_tokens_estimated=1050, image_tokens=1000
    ).text_ratio == pytest.approx(2.0)


# --- against the simulator ---------------------------------------------------------------------


def _run_job(job: Path, sim, monkeypatch) -> dict:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.base_url)
    err = io.StringIO()
    assert run(RunRequest(job_path=job), err=err, out=io.StringIO()) == EXIT_OK, err.getvalue()
    return sim.sim.ledger.snapshot()


def test_the_demo_estimate_matches_what_the_simulator_counts(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    job_path = write_demo(tmp_path)
    job, profile = load(job_path)
    est = estimate_job(job, profile)
    assert est.rows == 24 and est.images == 24 and est.rows_failing == 0
    ledger = _run_job(job_path, make_simulator(SimConfig()), monkeypatch)
    assert est.image_tokens == ledger["image_tokens"]
    assert abs(est.input_tokens - ledger["input_tokens"]) <= 0.05 * ledger["input_tokens"]
    assert est.output_tokens_max == 24 * job.request.max_tokens >= ledger["output_tokens"]


MIXED_SIZES = [
    (200, 200),
    (1000, 1000),
    (1092, 1092),
    (1075, 1520),
    (2000, 1500),
    (3840, 2160),
    (4000, 300),
    (90, 1400),
    (2576, 1449),
]

MIXED_JOB = """
[input]
manifest = "manifest.jsonl"
id_column = "id"
image_column = "image"
prompt = "Describe this picture in one line. nonce={{id}}"

[request]
model = "{model}"
max_tokens = 40
system = "You write alt text."

[run]
output = "out"
concurrency = 4
{extra}
"""


def mixed_job(folder: Path, model: str, extra: str = "") -> Path:
    """Images of mixed sizes and kinds, single- and multi-image rows, one with 21 images."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (w, h) in enumerate(MIXED_SIZES):
        name = f"img{i}.{'png' if i % 3 == 2 else 'jpg'}"
        Image.new("RGB", (w, h), (30 * i % 256, 120, 200)).save(folder / name)
        names.append(name)
    rows = [{"id": f"one-{i}", "image": name} for i, name in enumerate(names)]
    rows.append({"id": "pair", "image": names[:2]})
    rows.append({"id": "many", "image": [names[i % len(names)] for i in range(21)]})
    with (folder / "manifest.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    job = folder / "job.toml"
    job.write_text(MIXED_JOB.format(model=model, extra=extra))
    return job


@pytest.mark.parametrize("model", ["claude-haiku-5-5", "claude-opus-4-8"])
def test_mixed_sizes_image_tokens_exact_input_within_5_percent(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
    model: str,
) -> None:
    job_path = mixed_job(tmp_path, model)
    job, profile = load(job_path)
    est = estimate_job(job, profile)
    assert est.images == len(MIXED_SIZES) + 2 + 21
    ledger = _run_job(job_path, make_simulator(SimConfig()), monkeypatch)
    assert ledger["images_resized"] == 0
    assert est.image_tokens == ledger["image_tokens"]
    assert abs(est.input_tokens - ledger["input_tokens"]) <= 0.05 * ledger["input_tokens"]


def test_an_exact_sample_is_counted_by_the_api(tmp_path: Path, make_simulator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sim = make_simulator(SimConfig())
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.base_url)
    job, profile = load(mixed_job(tmp_path, "claude-haiku-5-5"))
    est = estimate_job(job, profile, exact_sample_rows=3)
    assert est.sample is not None and est.sample.rows == 3
    # three rows spread over the 11 (every third: one-0, one-3, one-6), one image each, as the
    # simulator's tokenizer counts them: the sample's exact figure is the API's count
    picked = (0, 3, 6)
    f100 = sim_tokens.factor_hundredths(profile)
    framing = sim_tokens.MESSAGE_OVERHEAD + sim_tokens.IMAGE_BLOCK_OVERHEAD
    text = sum(
        sim_tokens.text_tokens("You write alt text.", f100)
        + framing
        + sim_tokens.text_tokens(f"Describe this picture in one line. nonce=one-{i}", f100)
        for i in picked
    )
    assert est.sample.image_tokens == sum(
        sent_image_tokens(profile, ImageOptions(), MIXED_SIZES[i], 1) for i in picked
    )
    assert est.sample.input_tokens_exact == est.sample.image_tokens + text
    assert est.sample.input_tokens_exact != est.sample.input_tokens_estimated
    counted = sim.sim.ledger.snapshot()["requests"]["POST /v1/messages/count_tokens"]
    assert counted == {"200": 3}
    assert "POST /v1/messages" not in sim.sim.ledger.snapshot()["requests"]


TEXT_HEAVY_JOB = """
[input]
manifest = "manifest.jsonl"
id_column = "id"
image_column = "image"
prompt = "Caption this {{id}} for the catalogue, following the house style above."

[request]
model = "{model}"
max_tokens = 40
system = {system}

[run]
output = "out"
concurrency = 4
"""

HOUSE_STYLE = (
    "You write alt text for a museum's online catalogue. Follow the house style exactly:\n"
    "1. One sentence, at most 25 words; no 'image of' or 'picture of'.\n"
    "2. Name the object first, then its material, then its colour (e.g. 'Bronze bowl, green patina').\n"
    "3. Dates as YYYY or YYYY-YYYY, sizes in cm (e.g. 12.5 x 30 cm), never inches.\n"
    '4. Quote any visible inscription verbatim, in "double quotes".\n'
    "5. If unsure, say so: 'possibly', 'appears to be'. Do not guess a maker or a provenance.\n"
) * 4


def test_an_exact_sample_brings_the_text_estimate_closer(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    # a long system prompt, small images: text is most of the input, so the text estimate matters
    tmp_path.mkdir(exist_ok=True)
    rows = []
    for i in range(8):
        Image.new("RGB", (200, 200), (20 * i, 90, 160)).save(tmp_path / f"obj{i}.jpg")
        rows.append({"id": f"object-{i}", "image": f"obj{i}.jpg"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job_path = tmp_path / "job.toml"
    job_path.write_text(TEXT_HEAVY_JOB.format(model="claude-haiku-5-5", system=json.dumps(HOUSE_STYLE)))
    job, profile = load(job_path)
    plain = estimate_job(job, profile)
    sim = make_simulator(SimConfig())
    ledger = _run_job(job_path, sim, monkeypatch)
    assert plain.image_tokens == ledger["image_tokens"]
    assert ledger["input_tokens"] - ledger["image_tokens"] > 3 * ledger["image_tokens"]
    calibrated = estimate_job(job, profile, exact_sample_rows=3)
    assert calibrated.sample is not None and calibrated.sample.text_ratio != 1.0
    assert calibrated.image_tokens == plain.image_tokens
    error_plain = abs(plain.input_tokens - ledger["input_tokens"])
    error_calibrated = abs(calibrated.input_tokens - ledger["input_tokens"])
    assert error_calibrated < error_plain
    assert error_calibrated <= 0.01 * ledger["input_tokens"]
    assert calibrated.cost_usd_online != plain.cost_usd_online


def test_the_command_json_and_a_failing_row(tmp_path: Path) -> None:
    job_path = mixed_job(tmp_path, "claude-haiku-5-5", extra="\n[limits]\nrpm = 60\nbudget_usd = 0.001\n")
    with (tmp_path / "manifest.jsonl").open("a") as fh:
        fh.write(json.dumps({"id": "gone", "image": "nope.jpg"}) + "\n")
    done = estimate_json(job_path)
    assert done.returncode == 0, done.stderr
    est = json.loads(done.stdout)
    for key in ("rows", "images", "input_tokens", "output_tokens_max", "cost_usd_online", "cost_usd_batch"):
        assert key in est
    assert est["rows"] == len(MIXED_SIZES) + 3 and est["rows_failing"] == 1
    assert est["failures"] == {"not_found": 1}
    assert est["output_tokens_max"] == 40 * (est["rows"] - 1)
    half = est["cost_usd_online"] * HAIKU.prices.batch_discount
    assert est["cost_usd_batch"] == pytest.approx(half, rel=1e-5)
    # rpm = 60 is the job's; input and output start at the lowest tier's (30k / 8k a minute)
    assert est["time_s"] == pytest.approx(
        run_time_s(est["rows"] - 1, est["input_tokens"], est["output_tokens_max"], 60, 30_000, 8_000)
    )
    assert est["limits_source"].startswith("job [limits] over tier-1")

    text = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "estimate", str(job_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0 and "cost batch" in text.stdout and "budget" in text.stdout

    bad = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "estimate", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "nope.toml" in bad.stderr


def test_the_time_is_at_the_tier_a_job_names_or_the_lowest(tmp_path: Path) -> None:
    job, profile = load(mixed_job(tmp_path / "t2", "claude-haiku-5-5", extra='\n[limits]\ntier = "tier-2"\n'))
    est = estimate_job(job, profile)
    assert est.limits_source is not None and est.limits_source.startswith("tier-2")
    assert est.time_s == run_time_s(est.rows, est.input_tokens, est.output_tokens_max, 1000, 450_000, 90_000)
    job, profile = load(mixed_job(tmp_path / "none", "claude-haiku-5-5"))
    est = estimate_job(job, profile)
    assert est.limits_source is not None and est.limits_source.startswith("tier-1")
    assert est.time_s == run_time_s(est.rows, est.input_tokens, est.output_tokens_max, 50, 30_000, 8_000)


def test_after_a_run_the_time_is_at_the_limits_the_api_reported(
    tmp_path: Path,
    make_simulator,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    from batcher.simulator.config import RateLimits

    job_path = mixed_job(tmp_path, "claude-haiku-5-5")
    _run_job(
        job_path,
        make_simulator(SimConfig(limits=RateLimits(rpm=600, itpm=2_000_000, otpm=400_000))),
        monkeypatch,
    )
    job, profile = load(job_path)
    est = estimate_job(job, profile)
    assert est.limits_source is not None and "learned from the API" in est.limits_source
    assert est.time_s == run_time_s(
        est.rows, est.input_tokens, est.output_tokens_max, 600, 2_000_000, 400_000
    )


def test_the_sample_spreads_over_the_manifest() -> None:
    from batcher.estimator import sample_stride

    assert sample_stride(11, 3) == 3 and sample_stride(2, 5) == 1 and sample_stride(10_000, 20) == 500
