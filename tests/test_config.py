"""Job files: every mistake is one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.config import ConfigError, check_against_model, job_registry, load_job, parse_job

GOOD = """
[input]
manifest = "manifest.csv"
image_column = "image"
prompt = "Describe {title}"

[request]
model = "claude-haiku-5-5"
max_tokens = 300

[run]
output = "out/{job}"
concurrency = 8
"""


def write(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_job_loads_with_defaults(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD))
    assert job.request.model == "claude-haiku-5-5"
    assert job.images.transport == "base64" and job.run.mode == "online"
    assert job.manifest_path == tmp_path / "manifest.csv"
    assert job.output_dir() == tmp_path / "out" / "job"
    assert job.output_dir("elsewhere") == Path("elsewhere").resolve()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("concurrency = 8", "concurency = 8"), "run.concurency: unknown key"),
        (("max_tokens = 300", 'max_tokens = "lots"'),
         "request.max_tokens: Input should be a valid integer, unable to parse string as an integer"),
        (("max_tokens = 300", "max_tokens = 0"), "request.max_tokens: Input should be greater than 0"),
        (('model = "claude-haiku-5-5"', ""), "request.model: missing"),
        (('prompt = "Describe {title}"', ""),
         "input: set exactly one of prompt_column or prompt (a template)"),
        (("concurrency = 8", 'mode = "turbo"'), "run.mode: Input should be 'online' or 'batch'"),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert str(info.value) == f"{path}: {message}"


def test_broken_toml_and_missing_file_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(write(tmp_path, "[input\n"))
    with pytest.raises(ConfigError, match="no such job file"):
        load_job(tmp_path / "nope.toml")


def test_model_rules_name_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    job = load_job(path)
    registry = job_registry(job)
    haiku5, haiku4 = registry["claude-haiku-5-5"], registry["claude-haiku-4-5"]
    check_against_model(job, haiku5)

    def bad(update: dict, profile, message: str) -> None:  # type: ignore[no-untyped-def]
        raw = job.model_dump(exclude={"path", "base_dir"})
        for section, values in update.items():
            raw[section].update(values)
        with pytest.raises(ConfigError, match=message):
            check_against_model(parse_job(raw, path), profile)

    bad({"request": {"temperature": 0.2}}, haiku5, "request.temperature: claude-haiku-5-5 refuses")
    check_against_model(parse_job({**job.model_dump(exclude={"path", "base_dir"}),
                                   "request": {"model": "claude-haiku-4-5", "max_tokens": 10,
                                               "temperature": 0.2}}, path), haiku4)
    bad({"request": {"model": "claude-haiku-4-5", "temperature": 0.2, "top_p": 0.9}}, haiku4,
        "request.top_p: claude-haiku-4-5 takes temperature or top_p, not both")
    bad({"request": {"max_tokens": 10**6}}, haiku5, "request.max_tokens: 1000000 is above")
    bad({"images": {"max_edge": 2000}}, haiku5, "images.max_edge: 2000 is above")
    bad({"images": {"max_image_tokens": 5000}}, haiku5, "images.max_image_tokens")
    bad({"images": {"max_b64_bytes": 50_000_000}}, haiku5, "images.max_b64_bytes")


def test_job_models_table_overrides_a_profile(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD + '\n[models.claude-haiku-5-5]\nimage_token_budget = 999\n'))
    assert job_registry(job)["claude-haiku-5-5"].image_token_budget == 999
    job = load_job(write(tmp_path, GOOD + '\n[models.claude-haiku-5-5]\nbudget = 999\n', "b.toml"))
    with pytest.raises(ConfigError, match=r"b.toml: models.claude-haiku-5-5.budget: unknown"):
        job_registry(job)
