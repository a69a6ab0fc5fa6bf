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
        (
            ("max_tokens = 300", 'max_tokens = "lots"'),
            'request.max_tokens: Input should be a valid integer, not the string "lots"',
        ),
        (("max_tokens = 300", "max_tokens = 0"), "request.max_tokens: Input should be greater than 0"),
        (('model = "claude-haiku-5-5"', ""), "request.model: missing"),
        (
            ('prompt = "Describe {title}"', ""),
            "input: set exactly one of prompt_column or prompt (a template)",
        ),
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
    check_against_model(
        parse_job(
            {
                **job.model_dump(exclude={"path", "base_dir"}),
                "request": {"model": "claude-haiku-4-5", "max_tokens": 10, "temperature": 0.2},
            },
            path,
        ),
        haiku4,
    )
    bad(
        {"request": {"model": "claude-haiku-4-5", "temperature": 0.2, "top_p": 0.9}},
        haiku4,
        "request.top_p: claude-haiku-4-5 takes temperature or top_p, not both",
    )
    bad({"request": {"max_tokens": 10**6}}, haiku5, "request.max_tokens: 1000000 is above")
    bad({"images": {"max_edge": 2000}}, haiku5, "images.max_edge: 2000 is above")
    bad({"images": {"max_image_tokens": 5000}}, haiku5, "images.max_image_tokens")
    bad({"images": {"max_b64_bytes": 50_000_000}}, haiku5, "images.max_b64_bytes")


def test_job_models_table_overrides_a_profile(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD + "\n[models.claude-haiku-5-5]\nimage_token_budget = 999\n"))
    assert job_registry(job)["claude-haiku-5-5"].image_token_budget == 999
    job = load_job(write(tmp_path, GOOD + "\n[models.claude-haiku-5-5]\nbudget = 999\n", "b.toml"))
    with pytest.raises(ConfigError, match=r"b.toml: models.claude-haiku-5-5.budget: unknown"):
        job_registry(job)


# --- issue 13.10: strict types; 13.9: run.output placeholders ----------------------------------


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [
        ("run", 'concurrency = "8"', 'run.concurrency: Input should be a valid integer, not the string "8"'),
        ("run", 'wait = "no"', 'run.wait: Input should be a valid boolean, not the string "no"'),
        (
            "request",
            'temperature = "0.5"',
            'request.temperature: Input should be a valid number, not the string "0.5"',
        ),
        (
            "images",
            'allow_truncated = "1"',
            'images.allow_truncated: Input should be a valid boolean, not the string "1"',
        ),
        (
            "images",
            "allow_truncated = 1",
            "images.allow_truncated: Input should be a valid boolean, not the integer 1",
        ),
        (
            "request",
            "max_tokens = true",
            "request.max_tokens: Input should be a valid integer, not the boolean true",
        ),
        ("run", "concurrency = 8.0", "run.concurrency: Input should be a valid integer, not the number 8.0"),
        (
            "limits",
            'budget_usd = "5"',
            'limits.budget_usd: Input should be a valid number, not the string "5"',
        ),
        ("run", "output = 5", "run.output: Input should be a valid string, not the integer 5"),
    ],
)
def test_wrong_types_are_refused_not_coerced(tmp_path: Path, section: str, line: str, message: str) -> None:
    text = GOOD.replace("max_tokens = 300\n", "") if line.startswith("max_tokens") else GOOD
    text = text.replace("concurrency = 8\n", "") if line.startswith("concurrency") else text
    text = text.replace('output = "out/{job}"\n', "") if line.startswith("output") else text
    text = (
        text.replace(f"[{section}]\n", f"[{section}]\n{line}\n")
        if f"[{section}]" in text
        else (f"{text}\n[{section}]\n{line}\n")
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert str(info.value) == f"{path}: {message}"


def test_integers_are_still_taken_where_floats_are_expected(tmp_path: Path) -> None:
    job = load_job(
        write(
            tmp_path,
            GOOD.replace("[run]", "[run]\nmax_retry_wait_s = 30\npoll_max_s = 5")
            + "\n[limits]\nbudget_usd = 5\nrpm = 50\n",
        )
    )
    assert job.run.max_retry_wait_s == 30.0 and isinstance(job.run.max_retry_wait_s, float)
    assert job.limits.budget_usd == 5.0 and job.limits.rpm == 50.0
    job = load_job(
        write(
            tmp_path,
            GOOD.replace('model = "claude-haiku-5-5"', 'model = "claude-haiku-4-5"\ntemperature = 1'),
            "t.toml",
        )
    )
    assert job.request.temperature == 1.0


@pytest.mark.parametrize(
    ("output", "shown"),
    [
        ("out/{jobb}", "unknown placeholder {jobb}"),
        ("out/{0}", "unknown placeholder {0}"),
        ("out/{}", "unknown placeholder {}"),
        ("out/{job.name}", "unknown placeholder {job.name}"),
        ("out/{job!r}", "unknown placeholder {job!r}"),
        ("out/{job", "a single { or } outside a placeholder"),
        ("out/job}", "a single { or } outside a placeholder"),
    ],
)
def test_a_bad_output_placeholder_is_one_line_naming_the_key(tmp_path: Path, output: str, shown: str) -> None:
    path = write(tmp_path, GOOD.replace('output = "out/{job}"', f'output = "{output}"'))
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert str(info.value) == (
        f"{path}: run.output: {shown}; only {{job}} (the job file's name) is "
        "replaced; write {{ and }} for literal braces"
    )


def test_doubled_braces_are_literal_in_the_output(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD.replace('output = "out/{job}"', 'output = "out/{{x}}-{job}"')))
    assert job.output_dir() == tmp_path / "out" / "{x}-job"


@pytest.mark.parametrize("output", ["out/{jobb}", "out/{0}"])
def test_batcher_run_refuses_a_bad_output_placeholder_in_one_line(
    tmp_path: Path,
    simulator,  # type: ignore[no-untyped-def]
    output: str,
) -> None:
    from tests.helpers import batcher, good_rows, messages_sent, write_job

    job = write_job(tmp_path, good_rows(tmp_path, 1))
    job.write_text(job.read_text().replace('output = "out"', f'output = "{output}"'))
    done = batcher(job, simulator)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"batcher: {job}: run.output: unknown placeholder {output[4:]}; only {{job}} (the job "
        "file's name) is replaced; write {{ and }} for literal braces"
    ]
    assert messages_sent(simulator) == 0


@pytest.mark.parametrize(
    ("line", "key"), [('concurrency = "8"', "run.concurrency"), ('wait = "no"', "run.wait")]
)
def test_batcher_run_refuses_a_quoted_number_or_boolean_in_one_line(
    tmp_path: Path,
    simulator,  # type: ignore[no-untyped-def]
    line: str,
    key: str,
) -> None:
    from tests.helpers import batcher, good_rows, messages_sent, write_job

    job = write_job(tmp_path, good_rows(tmp_path, 1))
    job.write_text(job.read_text().replace("concurrency = 8", line))
    done = batcher(job, simulator)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"batcher: {job}: {key}: Input should be a valid ")
    assert messages_sent(simulator) == 0


# --- [output]: structured output -------------------------------------------------------------------


def test_no_output_table_is_none(tmp_path: Path) -> None:
    assert load_job(write(tmp_path, GOOD)).output is None


def test_the_output_table_with_its_defaults(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD + '\n[output]\nschema = "schemas/tags.json"\n'))
    assert job.output is not None
    assert (job.output.schema, job.output.columns, job.output.retry_invalid) == (
        "schemas/tags.json",
        "flatten",
        1,
    )
    inline = load_job(
        write(
            tmp_path,
            GOOD + '\n[output]\ncolumns = "struct"\nretry_invalid = 0\n[output.schema]\ntype = "object"\n',
        )
    )
    assert inline.output is not None
    assert inline.output.schema == {"type": "object"}
    assert (inline.output.columns, inline.output.retry_invalid) == ("struct", 0)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            "schema = 3",
            "output.schema: a schema file, a pydantic model (module:Class) or an inline table, "
            "not the integer 3",
        ),
        (
            'schema = ["a"]',
            "output.schema: a schema file, a pydantic model (module:Class) or an inline table, not an array",
        ),
        ('columns = "flatten"', "output.schema: missing"),
        ('schema = "s.json"\ncolumns = "wide"', "output.columns: Input should be 'flatten' or 'struct'"),
        (
            'schema = "s.json"\nretry_invalid = 11',
            "output.retry_invalid: Input should be less than or equal to 10",
        ),
        (
            'schema = "s.json"\nretry_invalid = -1',
            "output.retry_invalid: Input should be greater than or equal to 0",
        ),
        (
            'schema = "s.json"\nretry_invalid = "2"',
            'output.retry_invalid: Input should be a valid integer, not the string "2"',
        ),
        ('schema = "s.json"\nretry = 2', "output.retry: unknown key"),
    ],
)
def test_bad_output_keys_are_named(tmp_path: Path, lines: str, message: str) -> None:
    path = write(tmp_path, f"{GOOD}\n[output]\n{lines}\n")
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert str(info.value) == f"{path}: {message}"


def test_result_data_round_trips_and_older_json_reads_as_none() -> None:
    import json

    from batcher.records import Result

    result = Result(id="a", status="ok", text='{"n": 1}', data={"n": 1, "tags": ["x"], "sub": {"f": 1.5}})
    assert Result.from_json(result.to_json()) == result
    old = json.loads(result.to_json())
    del old["data"]
    assert Result.from_json(json.dumps(old)).data is None
    assert Result(id="b", status="error").data is None


# --- issue 16: system_file and [[request.examples]] ---------------------------------------------

FIXED = GOOD.replace('prompt = "Describe {title}"', 'prompt = "Describe this image, {{exactly}}."')


def test_system_file_is_read_at_load_relative_to_the_job(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "style.md").write_text("Write plainly. ✓\n", encoding="utf-8")
    job = load_job(
        write(
            tmp_path, GOOD.replace("max_tokens = 300", 'max_tokens = 300\nsystem_file = "prompts/style.md"')
        )
    )
    assert job.request.system == "Write plainly. ✓\n"
    from batcher.core.plan import settings_for

    assert settings_for(job).system == "Write plainly. ✓\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("   \n", "is empty"),
        (b"\xff\xfe bad", "is not UTF-8"),
        ("folder", "is a folder"),
    ],
)
def test_a_bad_system_file_names_the_key(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    target = tmp_path / "style.md"
    if content == "folder":
        target.mkdir()
    elif isinstance(content, bytes):
        target.write_bytes(content)
    elif content is not None:
        target.write_text(content)
    path = write(tmp_path, GOOD.replace("max_tokens = 300", 'max_tokens = 300\nsystem_file = "style.md"'))
    with pytest.raises(ConfigError, match=rf"^{path}: request\.system_file: .*{message}"):
        load_job(path)


def test_system_and_system_file_are_exclusive(tmp_path: Path) -> None:
    (tmp_path / "s.md").write_text("x")
    path = write(
        tmp_path, GOOD.replace("max_tokens = 300", 'max_tokens = 300\nsystem = "a"\nsystem_file = "s.md"')
    )
    with pytest.raises(ConfigError, match="request: set system or system_file, not both"):
        load_job(path)


def example(body: str) -> str:
    return f"\n[[request.examples]]\n{body}\n"


def test_examples_resolve_images_and_take_a_fixed_prompt(tmp_path: Path) -> None:
    text = (
        FIXED
        + example('image = "ex/a.jpg"\nanswer = "A."')
        + example('images = ["b.jpg", "https://example.com/c.jpg"]\nprompt = "Both?"\nanswer = "B."')
    )
    job = load_job(write(tmp_path, text))
    first, second = job.request.examples
    assert first.image == str(tmp_path / "ex" / "a.jpg") and first.prompt == "Describe this image, {exactly}."
    assert second.image_list == [str(tmp_path / "b.jpg"), "https://example.com/c.jpg"]
    assert second.prompt == "Both?"


@pytest.mark.parametrize(
    ("job_text", "body", "message"),
    [
        (
            GOOD,
            'image = "a.jpg"\nanswer = "x"',
            r"request\.examples\[0\]\.prompt: missing: the job's prompt is a template",
        ),
        (
            GOOD.replace('prompt = "Describe {title}"', 'prompt_column = "p"'),
            'image = "a.jpg"\nanswer = "x"',
            r"request\.examples\[0\]\.prompt: missing: the job's prompts come from the manifest's column 'p'",
        ),
        (
            FIXED,
            'image = "a.jpg"\nanswer = { caption = "x" }',
            r"request\.examples\[0\]\.answer: a table answer needs \[output\]",
        ),
        (FIXED, 'image = "a.jpg"\nanswer = "  "', r"request\.examples\[0\]\.answer: empty"),
        (FIXED, 'answer = "x"', r"request\.examples\[0\]: set exactly one of image or images"),
        (
            FIXED,
            'image = "a.jpg"\nanswer = "x"\ncolour = "red"',
            r"request\.examples\[0\]\.colour: unknown key",
        ),
        (FIXED, 'image = "a.jpg"', r"request\.examples\[0\]\.answer: missing"),
    ],
)
def test_example_mistakes_name_the_example_and_key(
    tmp_path: Path, job_text: str, body: str, message: str
) -> None:
    path = write(tmp_path, job_text + example(body))
    with pytest.raises(ConfigError, match=rf"^{path}: {message}"):
        load_job(path)


def test_examples_with_more_images_than_a_request_takes_are_refused(tmp_path: Path) -> None:
    import dataclasses

    job = load_job(write(tmp_path, FIXED + example('images = ["a.jpg", "b.jpg", "c.jpg"]\nanswer = "x"')))
    profile = dataclasses.replace(job_registry(job)["claude-haiku-5-5"], images_per_request=3)
    with pytest.raises(ConfigError, match=r"request\.examples: the examples hold 3 images.*at most 3"):
        check_against_model(job, profile)
    check_against_model(job, dataclasses.replace(profile, images_per_request=4))


def test_the_minimum_cacheable_length_is_unknown_unless_a_profile_says(tmp_path: Path) -> None:
    text = GOOD + "\n[models.my-model]\nprices = { input = 1.0, output = 2.0 }\n"
    registry = job_registry(load_job(write(tmp_path, text)))
    assert registry["my-model"].min_cacheable_tokens is None
    assert registry["claude-haiku-5-5"].min_cacheable_tokens == 512
    assert all(p.min_cacheable_tokens is not None for p in registry if p.id != "my-model")


# --- the engine: [run] engine, [ray] (issue 18) ---------------------------------------------------


def test_the_engine_defaults_to_local_and_ray_to_two_workers(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD))
    assert job.run.engine == "local"
    assert (job.ray.address, job.ray.workers, job.ray.worker_cpus) == (None, 2, 1.0)
    text = (
        GOOD.replace("[run]\n", '[run]\nengine = "ray"\n')
        + '\n[ray]\naddress = "ray://head:10001"\nworkers = 8\n'
    )
    job = load_job(write(tmp_path, text))
    assert (job.run.engine, job.ray.address, job.ray.workers) == ("ray", "ray://head:10001", 8)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('[run]\nengine = "spark"\n', "run.engine: Input should be 'local' or 'ray'"),
        ("[ray]\nworkers = 0\n", "ray.workers: Input should be greater than 0"),
        ("[ray]\nnodes = 3\n", "ray.nodes: unknown key"),
        ('[ray]\naddress = " "\n', "ray.address: empty (leave it out to start a local Ray instance)"),
        ("[ray]\nworker_cpus = 0\n", "ray.worker_cpus: Input should be greater than 0"),
        (
            '[run]\nengine = "ray"\nmode = "batch"\n',
            'run.engine: "ray" sends online requests from the cluster\'s workers; with run.mode = '
            '"batch" the API runs them (use one or the other)',
        ),
        (
            '[run]\nengine = "ray"\n[images]\ntransport = "files"\n',
            'run.engine: "ray" cannot send images.transport = "files" (the file ids live in the '
            'driver\'s job state): use "base64" or "url"',
        ),
    ],
)
def test_bad_engine_keys_are_named(tmp_path: Path, lines: str, message: str) -> None:
    text = GOOD.replace("[run]\n", "[run-was]\n").split("[run-was]")[0] + lines
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert str(info.value) == f"{path}: {message}"


def test_the_command_line_engine_overrides_the_job_and_is_checked_the_same(tmp_path: Path) -> None:
    from batcher.config import with_engine

    job = load_job(write(tmp_path, GOOD))
    assert with_engine(job, None, None) is job
    ray = with_engine(job, "ray", "auto")
    assert (ray.run.engine, ray.ray.address, ray.run.concurrency) == ("ray", "auto", 8)
    with pytest.raises(ConfigError, match=r"^--ray-address: empty"):
        with_engine(job, "ray", "")
    batch = load_job(write(tmp_path, GOOD.replace("concurrency = 8", 'mode = "batch"')))
    with pytest.raises(ConfigError, match=r'run.engine: "ray" sends online requests'):
        with_engine(batch, "ray", None)
