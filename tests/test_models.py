"""Model profiles: the table loads, resolves every name, prices, and takes user overrides."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest

from batcher.models import ModelConfigError, build_registry, load_registry, packaged_models_path

NOTES_MODELS = [
    "claude-haiku-5-5",
    "claude-sonnet-5-5",
    "claude-opus-5-5",
    "claude-fable-5-1",
    "claude-sonnet-5",
    "claude-opus-5",
    "claude-opus-4-8",
    "claude-opus-4-7",
    "claude-sonnet-4-6",
    "claude-opus-4-6",
    "claude-haiku-4-5",
    "claude-sonnet-4-5",
]


def base() -> dict:
    return tomllib.loads(packaged_models_path().read_text())


def test_every_model_in_the_notes_table_has_a_profile() -> None:
    registry = load_registry()
    for model in NOTES_MODELS:
        assert model in registry, model


def test_dated_ids_resolve_to_their_model() -> None:
    registry = load_registry()
    assert registry["claude-sonnet-4-5-20250929"].id == "claude-sonnet-4-5"
    assert registry["claude-haiku-4-5-20251001"].id == "claude-haiku-4-5"


def test_profiles_carry_todays_numbers() -> None:
    r = load_registry()
    haiku, opus, old = r["claude-haiku-5-5"], r["claude-opus-4-8"], r["claude-haiku-4-5"]
    assert (haiku.native_edge, haiku.image_token_budget, haiku.images_per_request) == (1568, 1568, 600)
    assert (opus.native_edge, opus.image_token_budget) == (2576, 4784)
    assert old.images_per_request == 100 and old.context_window == 200_000
    assert not haiku.sampling_params and old.sampling_params
    assert haiku.prices.for_prompt(1000) == (0.10, 0.50)
    assert haiku.prices.for_prompt(100_001) == (0.50, 2.50)
    assert haiku.prices.cache_read == pytest.approx(0.01)
    assert old.prices.cache_write_5m == pytest.approx(1.25) and old.prices.cache_write_1h == 2.0


def test_sonnet_4_5_retires_at_the_end_of_november_2026() -> None:
    sonnet = load_registry()["claude-sonnet-4-5"]
    assert sonnet.lifecycle == "deprecated" and sonnet.retires == dt.date(2026, 11, 30)
    assert not sonnet.is_retired(dt.date(2026, 11, 30))
    assert sonnet.is_retired(dt.date(2026, 12, 1))


def test_native_size_per_model() -> None:
    r = load_registry()
    assert r["claude-haiku-5-5"].native_size(3840, 2160) == (1456, 819)
    assert r["claude-opus-4-8"].native_size(3840, 2160) == (2576, 1449)
    assert r["claude-opus-4-8"].image_tokens(3840, 2160) == 4784
    assert r["claude-haiku-5-5"].image_tokens(1075, 1520) == 33 * 47


def test_a_layer_overrides_a_field_and_adds_a_model() -> None:
    layer = {
        "models": {
            "claude-haiku-4-5-20251001": {"prices": {"input": 0.8}},
            "my-finetune": {"prices": {"input": 1.0, "output": 2.0}, "native_edge": 1000},
        }
    }
    r = build_registry(base(), [("job.toml", layer)])
    assert r["claude-haiku-4-5"].prices.input == 0.8
    assert r["claude-haiku-4-5"].prices.output == 5.0  # untouched fields stay
    mine = r["my-finetune"]
    assert mine.native_edge == 1000 and mine.image_token_budget == 1568  # from [defaults]
    assert mine.source == "job.toml"


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"x": {"prices": {"input": 1, "output": 1}, "native_edeg": 5}}, "models.x.native_edeg: unknown"),
        ({"x": {"prices": {"input": "cheap", "output": 1}}}, "models.x.prices.input: expected"),
        ({"x": {"prices": {"output": 1}}}, "models.x.prices.input: missing"),
        ({"x": {"prices": {"input": 1, "output": 1}, "lifecycle": "deprecated"}}, "retires"),
        ({"x": {"prices": {"input": 1, "output": 1}, "images_per_request": True}}, "expected int"),
        ({"x": {"prices": {"input": 1, "output": 1}, "native_edge": 0}}, "must be positive"),
    ],
)
def test_bad_override_names_the_key(layer: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message.replace(".", r"\.")):
        build_registry(base(), [("job.toml", {"models": layer})])


def test_user_config_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "models.toml"
    user.write_text("[models.claude-haiku-5-5]\nimage_token_budget = 1000\n")
    monkeypatch.setenv("BATCHER_MODELS", str(user))
    assert load_registry()["claude-haiku-5-5"].image_token_budget == 1000


def test_a_broken_user_config_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    user = tmp_path / "models.toml"
    user.write_text("[models.x\n")
    monkeypatch.setenv("BATCHER_MODELS", str(user))
    with pytest.raises(ModelConfigError, match="not valid TOML"):
        load_registry()


def test_models_command_lists_every_profile() -> None:
    import json

    from click.testing import CliRunner

    from batcher.cli import main

    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert {r["id"] for r in rows} >= set(NOTES_MODELS)
    opus = next(r for r in rows if r["id"] == "claude-opus-4-8")
    assert (opus["native_edge"], opus["image_token_budget"], opus["images_per_request"]) == (2576, 4784, 600)
    # every price the profile holds, as NOTES gives them (Haiku 5.5: long prompts over 100k)
    haiku = next(r for r in rows if r["id"] == "claude-haiku-5-5")["prices"]
    assert (haiku["input"], haiku["output"], haiku["batch_discount"]) == (0.10, 0.50, 0.5)
    assert haiku["long_prompt"] == {"above_tokens": 100_000, "input": 0.50, "output": 2.50}
    assert haiku["cache_write_5m"] == pytest.approx(0.125) and haiku["cache_write_1h"] == pytest.approx(0.2)
    text = CliRunner().invoke(main, ["models"]).output
    assert "claude-sonnet-4-5" in text and "retires 2026-11-30" in text


def test_bytes_an_image_follow_the_context_window() -> None:
    # NOTES: 10 MB of base64 a image on the 1M-context models; the 200k ones keep the portable 5 MB
    for p in load_registry().all():
        expected = 10_485_760 if p.context_window >= 1_000_000 else 5_242_880
        assert p.max_image_b64_bytes == expected, p.id
        assert p.images_per_request == (600 if p.context_window >= 1_000_000 else 100), p.id
