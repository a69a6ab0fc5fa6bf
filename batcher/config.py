"""Job files (TOML) → a typed, validated :class:`JobConfig`.

Every problem is one :class:`ConfigError` whose message names the job file and the dotted key
(``jobs/x.toml: request.max_tokens: Input should be greater than 0``), so the CLI can print one
line and exit 2 before anything is sent. Checks that need the model's profile (sampling
parameters, max_tokens, batch capability, image caps) are in :func:`check_against_model`.
"""

from __future__ import annotations

import json
import string
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batcher import facts
from batcher.errors import JobError
from batcher.exits import EXIT_CONFIG
from batcher.models import ModelConfigError, ModelProfile, ModelRegistry, load_registry


class ConfigError(JobError, ValueError):
    """A job file that cannot run; the message names the file and the key."""

    exit_code = EXIT_CONFIG


class _Section(BaseModel):
    # An unknown key is a typo until proven otherwise: refuse it, naming it. Strict types: a quoted
    # "8" or "no" is a mistake in the file, not a number or a boolean (an integer is still taken
    # where a float is expected, as TOML writers do).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class InputConfig(_Section):
    manifest: str
    id_column: str | None = None
    image_column: str = "image"
    prompt_column: str | None = None
    #: a template over the manifest's columns: "Describe {title}"
    prompt: str | None = None

    @model_validator(mode="after")
    def _one_prompt_source(self) -> InputConfig:
        if (self.prompt_column is None) == (self.prompt is None):
            raise ValueError("set exactly one of prompt_column or prompt (a template)")
        return self


class ExampleConfig(_Section):
    """One few-shot example, ``[[request.examples]]``: an image (or several) and the answer wanted
    for it, sent as a user turn and an assistant turn before each row's own turn."""

    #: a path relative to the job file (or an http(s) URL); or ``images``, several
    image: str | None = None
    images: list[str] | None = None
    #: the example's user prompt; default: the job's own prompt template's text for that image
    prompt: str | None = None
    #: the answer wanted: text, or (with ``[output]``) a table sent as its JSON
    answer: str | dict[str, Any]

    @model_validator(mode="after")
    def _one_image_source(self) -> ExampleConfig:
        if (self.image is None) == (self.images is None):
            raise ValueError("set exactly one of image or images")
        if self.images is not None and not self.images:
            raise ValueError("images: at least one image")
        return self

    @property
    def image_list(self) -> list[str]:
        return [self.image] if self.image is not None else list(self.images or [])


class RequestConfig(_Section):
    model: str
    max_tokens: int = Field(gt=0)
    #: the system prompt; after :func:`load_job`, also the text ``system_file`` held
    system: str | None = None
    #: the system prompt from a file (relative to the job file, UTF-8) instead of ``system``:
    #: read at load into ``system``
    system_file: str | None = None
    #: few-shot examples, in order, before each row's own turn; after :func:`load_job` their image
    #: paths are absolute and each has its prompt
    examples: list[ExampleConfig] = []
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, gt=0)
    #: output_config.effort; thinking is billed as output within max_tokens
    effort: Literal[facts.EFFORT_LEVELS] | None = None  # type: ignore[valid-type]
    stop_sequences: list[str] | None = None

    @model_validator(mode="after")
    def _one_system_source(self) -> RequestConfig:
        if self.system is not None and self.system_file is not None:
            raise ValueError("set system or system_file, not both")
        return self


class CacheConfig(_Section):
    """[cache]: prompt caching of the prefix every row shares (system prompt, examples)."""

    #: "auto": one breakpoint at the end of the shared prefix when it is long enough; "off": none
    mode: Literal["auto", "off"] = "auto"
    #: "auto": 5m online, 1h in batch mode
    ttl: Literal["auto", "5m", "1h"] = "auto"


class RunConfig(_Section):
    output: str = "out/{job}"
    concurrency: int = Field(default=32, gt=0, le=4096)
    mode: Literal["online", "batch"] = "online"
    #: attempts a row gets in one run before it is left for the next run (not a final error)
    max_attempts: int = Field(default=8, gt=0, le=100)
    #: seconds a row may spend waiting on retries in one run
    max_retry_wait_s: float = Field(default=600.0, gt=0)
    #: seconds one request may take before it is abandoned and retried
    request_timeout_s: float = Field(default=600.0, gt=0)
    #: rows per Parquet part
    part_rows: int = Field(default=5000, gt=0)
    #: processes that prepare images (0: one per core)
    image_workers: int = Field(default=0, ge=0)
    #: mode "batch": wait for the batches to end (true), or submit and exit 75 so that the next
    #: `batcher run` (a cron tick) collects them (false)
    wait: bool = True
    #: mode "batch": seconds between polls of a running batch, doubling from the first to the most
    poll_initial_s: float = Field(default=1.0, gt=0)
    poll_max_s: float = Field(default=60.0, gt=0)
    #: mode "batch": requests and bytes per batch, at most the API's limits
    batch_max_requests: int = Field(default=facts.BATCH_MAX_REQUESTS, gt=0, le=facts.BATCH_MAX_REQUESTS)
    batch_max_bytes: int = Field(default=facts.BATCH_DEFAULT_BYTES, ge=1024 * 1024, le=facts.BATCH_MAX_BYTES)
    #: an object store prefix ("s3://bucket/prefix/") every sealed Parquet part is also written to
    #: (batcher.stores.ResultsMirror); the job state stays in the local output folder
    results_uri: str | None = None
    #: where the rows' requests run: "local" (this process tree) or "ray" (a Ray cluster's
    #: workers, one rate budget for all of them: batcher.engines.ray_driver; see [ray])
    engine: Literal["local", "ray"] = "local"

    @field_validator("results_uri")
    @classmethod
    def _an_object_store_prefix(cls, uri: str | None) -> str | None:
        from batcher.urls import OBJECT_SCHEMES, is_object

        if uri is None:
            return None
        if not is_object(uri) or not uri.split("://", 1)[1].strip("/"):
            schemes = ", ".join(f"{s}://" for s in OBJECT_SCHEMES)
            raise ValueError(f"{uri!r} is not an object store prefix ({schemes}bucket/prefix/)")
        return uri

    @field_validator("output")
    @classmethod
    def _only_job_placeholder(cls, output: str) -> str:
        problem = output_placeholder_problem(output)
        if problem is not None:
            raise ValueError(problem)
        return output


class ImagesConfig(_Section):
    transport: Literal["base64", "files", "url"] = "base64"
    #: ask for less than the model's native size: a long-edge cap and/or a token cap per image
    max_edge: int | None = Field(default=None, gt=0)
    max_image_tokens: int | None = Field(default=None, gt=0)
    #: base64 bytes per image; 5 MB by default (every platform), up to the model's limit
    max_b64_bytes: int = Field(default=facts.PORTABLE_IMAGE_B64_BYTES, gt=0)
    allow_truncated: bool = False
    files_beta: str = facts.FILES_BETA
    files_expire_s: int | None = Field(
        default=None, ge=facts.FILES_EXPIRES_MIN_S, le=facts.FILES_EXPIRES_MAX_S
    )
    delete_files_at_end: bool = False
    #: the Files API's own budget: requests a minute, and uploads in flight at once
    files_rpm: float = Field(default=facts.FILES_RPM, gt=0)
    files_concurrency: int = Field(default=4, gt=0, le=64)

    # Image URLs, when the job sends bytes (transport "base64" or "files"): see README "Image URLs".
    #: seconds a whole download may take, redirects included
    download_timeout_s: float = Field(default=60.0, gt=0)
    #: bytes a download may have
    download_max_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    #: download from loopback, private and link-local addresses too (refused by default)
    allow_private_urls: bool = False


class LimitsConfig(_Section):
    budget_usd: float | None = Field(default=None, gt=0)
    #: seed the client's rate-limit picture (it learns the real one from response headers)
    tier: str | None = None
    rpm: float | None = Field(default=None, gt=0)
    itpm: float | None = Field(default=None, gt=0)
    otpm: float | None = Field(default=None, gt=0)

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, tier: str | None) -> str | None:
        # A typo here would otherwise surface only once the run starts sending.
        if tier is not None:
            from batcher.ratelimit import load_presets

            tiers = load_presets()[1]
            if tier not in tiers:
                raise ValueError(f"{tier!r} is not a known tier ({', '.join(tiers)})")
        return tier


class OutputConfig(_Section):
    """[output]: structured output, a JSON Schema the answers must fit (see batcher.output)."""

    #: a JSON Schema file (relative to the job file), a pydantic model "module:Class" importable
    #: from the job's folder, or an inline table
    schema_: str | dict[str, Any] = Field(alias="schema")
    #: "flatten": one column per top-level property; "struct": one column `data`
    columns: Literal["flatten", "struct"] = "flatten"
    #: re-asks a row gets after an answer that fails validation
    retry_invalid: int = Field(default=1, ge=0, le=10)

    @field_validator("schema_", mode="before")
    @classmethod
    def _path_or_table(cls, value: object) -> object:
        if not isinstance(value, str | dict):
            raise ValueError(
                f"a schema file, a pydantic model (module:Class) or an inline table, not {_toml_value(value)}"
            )
        return value

    # `schema` is the key's name; pydantic's BaseModel has a (deprecated) `schema` method, so the
    # field is `schema_` under the alias and this property reads it.
    @property
    def schema(self) -> str | dict[str, Any]:  # type: ignore[override]
        return self.schema_


class RayConfig(_Section):
    """[ray]: the cluster and workers of ``[run] engine = "ray"``."""

    #: the cluster to join ("auto", "ray://head:10001", "head:6379"); none: start a local Ray
    address: str | None = None
    #: worker actors that prepare images and send the requests
    workers: int = Field(default=2, gt=0, le=1024)
    #: CPUs each worker asks of the cluster (its image pool has as many processes, at least one)
    worker_cpus: float = Field(default=1.0, gt=0, le=512)

    @field_validator("address")
    @classmethod
    def _not_empty(cls, address: str | None) -> str | None:
        if address is not None and not address.strip():
            raise ValueError("empty (leave it out to start a local Ray instance)")
        return address


class JobConfig(_Section):
    input: InputConfig
    request: RequestConfig
    run: RunConfig = RunConfig()
    images: ImagesConfig = ImagesConfig()
    limits: LimitsConfig = LimitsConfig()
    #: structured output: answers as JSON fitting a schema, stored as typed columns
    output: OutputConfig | None = None
    #: prompt caching of the shared prefix
    cache: CacheConfig = CacheConfig()
    #: the Ray engine's cluster and workers ([run] engine = "ray")
    ray: RayConfig = RayConfig()
    #: extra or overridden model profiles, as in configs/models.toml's [models] table
    models: dict[str, dict[str, Any]] = {}

    # Set by load_job, not by the file.
    path: Path = Path("job.toml")
    base_dir: Path = Path(".")

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def manifest_path(self) -> Path | str:
        """The manifest's file, resolved against the job's folder; an object store URI
        (``s3://bucket/data/manifest.csv``) as written."""
        from batcher.urls import is_object

        if is_object(self.input.manifest):
            return self.input.manifest
        return (self.base_dir / self.input.manifest).resolve()

    def output_dir(self, override: str | Path | None = None) -> Path:
        """``--out`` (relative to the current folder) or ``run.output`` (relative to the job file)."""
        if override is not None:
            return Path(override).resolve()
        return (self.base_dir / self.run.output.format(job=self.name)).resolve()


#: The one placeholder ``run.output`` may hold.
OUTPUT_PLACEHOLDERS = ("job",)


def output_placeholder_problem(template: str) -> str | None:
    """Why ``template`` cannot be formatted with just ``{job}``, or None if it can."""
    hint = "only {job} (the job file's name) is replaced; write {{ and }} for literal braces"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:  # a lone { or }
        return f"a single {{ or }} outside a placeholder; {hint}"
    for _literal, name, spec, conv in parsed:
        if name is None:
            continue
        shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        if name not in OUTPUT_PLACEHOLDERS or spec or conv:
            return f"unknown placeholder {shown}; {hint}"
    return None


def _key_of(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as the dotted key a job file's user reads: list items 0-based in
    brackets (``request.examples[0].answer``), as batcher's own checks name them."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif not part.startswith("function-"):
            key += f".{part}" if key else part
    return key


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = _key_of(err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if err["type"] == "missing":
        return f"{key}: missing"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in _TYPE_ERRORS:
        msg = f"{msg}, not {_toml_value(err['input'])}"
    return f"{key}: {msg}" if key else msg


#: pydantic's strict type errors: the message gains what the file holds instead.
_TYPE_ERRORS = frozenset(
    {"int_type", "float_type", "bool_type", "string_type", "list_type", "dict_type", "model_type"}
)


def _toml_value(value: object) -> str:
    """A value as the job file wrote it, for an error message ("the string \"8\"")."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {json.dumps(shown, ensure_ascii=False)}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def parse_job(data: dict[str, Any], path: Path) -> JobConfig:
    """Validate a parsed job table; ``path`` names the file in errors and anchors relative paths."""
    try:
        job = JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from None
    job = job.model_copy(update={"path": path, "base_dir": path.resolve().parent})
    check_engine(job)
    return _settle_request(job)


def check_engine(job: JobConfig) -> None:
    """The engine fits the mode: the Ray engine sends online requests from its workers, while batch
    mode's requests run on the API's side (a Message Batch needs no cluster)."""
    if job.run.engine == "ray" and job.run.mode == "batch":
        raise ConfigError(
            f'{job.path}: run.engine: "ray" sends online requests from the cluster\'s workers; '
            'with run.mode = "batch" the API runs them (use one or the other)'
        )
    if job.run.engine == "ray" and job.images.transport == "files":
        raise ConfigError(
            f'{job.path}: run.engine: "ray" cannot send images.transport = "files" (the file ids '
            'live in the driver\'s job state): use "base64" or "url"'
        )


def with_engine(job: JobConfig, engine: Literal["local", "ray"] | None, ray_address: str | None) -> JobConfig:
    """``batcher run --engine/--ray-address`` over the job file's ``[run] engine`` and
    ``[ray] address``, checked as the file's own keys are."""
    if engine is None and ray_address is None:
        return job
    if ray_address is not None and not ray_address.strip():
        raise ConfigError("--ray-address: empty (leave it out to start a local Ray instance)")
    run = job.run.model_copy(update={"engine": engine}) if engine is not None else job.run
    ray = job.ray.model_copy(update={"address": ray_address}) if ray_address is not None else job.ray
    changed = job.model_copy(update={"run": run, "ray": ray})
    check_engine(changed)
    return changed


def example_key(n: int, key: str | None = None) -> str:
    """The dotted key of the ``n``-th (0-based) ``[[request.examples]]`` (or of its ``key``)."""
    return f"request.examples[{n}]" + (f".{key}" if key else "")


def _settle_request(job: JobConfig) -> JobConfig:
    """What ``[request]`` needs from outside the table, settled at load: ``system_file``'s text
    becomes ``request.system`` (so everything that reads the system prompt reads it), each
    example's image paths are resolved against the job file's folder (URLs as they are), and its
    prompt defaults to the job's prompt when that is a template without placeholders."""
    req = job.request
    where = job.path
    update: dict[str, Any] = {}
    if req.system_file is not None:
        update["system"] = _read_system_file(job, req.system_file)
    if req.examples:
        default = _fixed_prompt(job.input)
        examples = []
        for n, example in enumerate(req.examples):
            if isinstance(example.answer, dict) and job.output is None:
                raise ConfigError(
                    f"{where}: {example_key(n, 'answer')}: a table answer needs [output] (a schema "
                    "its JSON fits); without [output], give the answer as text"
                )
            if isinstance(example.answer, str) and not example.answer.strip():
                raise ConfigError(f"{where}: {example_key(n, 'answer')}: empty")
            change: dict[str, Any] = {}
            if example.prompt is None:
                if default is None:
                    why = (
                        f"the job's prompts come from the manifest's column {job.input.prompt_column!r}"
                        if job.input.prompt_column is not None
                        else "the job's prompt is a template over manifest columns"
                    )
                    raise ConfigError(
                        f"{where}: {example_key(n, 'prompt')}: missing: {why}, so there is no prompt "
                        "for an example image; give the example its own prompt"
                    )
                change["prompt"] = default
            elif not example.prompt.strip():
                raise ConfigError(f"{where}: {example_key(n, 'prompt')}: empty")
            key = "image" if example.image is not None else "images"
            for i, source in enumerate(example.image_list):
                if not source.strip():
                    shown = key if key == "image" else f"images[{i}]"
                    raise ConfigError(f"{where}: {example_key(n, shown)}: empty")
            if example.image is not None:
                change["image"] = _example_source(job, example.image)
            else:
                change["images"] = [_example_source(job, s) for s in example.image_list]
            examples.append(example.model_copy(update=change))
        update["examples"] = examples
    if not update:
        return job
    return job.model_copy(update={"request": req.model_copy(update=update)})


def _example_source(job: JobConfig, source: str) -> str:
    from batcher.urls import is_remote

    return source if is_remote(source) else str((job.base_dir / source).resolve())


def _fixed_prompt(inp: InputConfig) -> str | None:
    """The job's prompt when it is the same for every row (a template without placeholders, its
    ``{{``/``}}`` as the braces they stand for), else None."""
    if inp.prompt is None:
        return None
    try:
        parsed = list(string.Formatter().parse(inp.prompt))
    except ValueError:
        return None
    if any(name is not None for _literal, name, _spec, _conv in parsed):
        return None
    return "".join(literal for literal, _name, _spec, _conv in parsed)


def _read_system_file(job: JobConfig, name: str) -> str:
    """``request.system_file``'s text (UTF-8, relative to the job file); a missing, unreadable or
    empty file is a ConfigError naming the key."""
    path = job.base_dir / name
    key = f"{job.path}: request.system_file"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{key}: no such file: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{key}: {path} is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{key}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise ConfigError(f"{key}: {path} is empty")
    return text


def load_job(path: str | Path) -> JobConfig:
    """Read and validate a job file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such job file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for reserved in ("path", "base_dir"):
        if reserved in data:
            raise ConfigError(f"{path}: {reserved}: unknown key")
    return parse_job(data, path)


def job_registry(job: JobConfig) -> ModelRegistry:
    """The model table with the job's own [models] overrides."""
    try:
        return load_registry(job.models, job_source=str(job.path))
    except ModelConfigError as exc:
        raise ConfigError(str(exc)) from None


def example_image_count(job: JobConfig) -> int:
    """Images the few-shot examples put in every request (a row's own come on top)."""
    return sum(len(example.image_list) for example in job.request.examples)


def check_against_model(job: JobConfig, profile: ModelProfile) -> None:
    """What a job may not ask of this model; each a ConfigError naming the key."""
    where = str(job.path)
    req = job.request
    if req.max_tokens > profile.max_output_tokens:
        raise ConfigError(
            f"{where}: request.max_tokens: {req.max_tokens} is above {profile.id}'s maximum of "
            f"{profile.max_output_tokens}"
        )
    if not profile.sampling_params:
        for param in facts.SAMPLING_PARAMS:
            if getattr(req, param) is not None:
                raise ConfigError(
                    f"{where}: request.{param}: {profile.id} refuses sampling parameters "
                    "(the API answers 400); remove it"
                )
    if profile.sampling_one_of and req.temperature is not None and req.top_p is not None:
        raise ConfigError(
            f"{where}: request.top_p: {profile.id} takes temperature or top_p, not both "
            "(the API answers 400); remove one"
        )
    if req.effort is not None and not profile.can("effort"):
        raise ConfigError(f"{where}: request.effort: {profile.id} does not take an effort level")
    if not profile.can("image_input"):
        raise ConfigError(f"{where}: request.model: {profile.id} does not accept images")
    if job.run.mode == "batch" and not profile.can("batch"):
        raise ConfigError(f"{where}: run.mode: {profile.id} is not available in the Batch API")
    shared = example_image_count(job)
    if shared and shared >= profile.images_per_request:
        raise ConfigError(
            f"{where}: request.examples: the examples hold {shared} images, but {profile.id} takes "
            f"at most {profile.images_per_request} in a request and each row needs one of its own; "
            f"keep the examples to {profile.images_per_request - 1} images or fewer"
        )
    if job.images.max_b64_bytes > profile.max_image_b64_bytes:
        raise ConfigError(
            f"{where}: images.max_b64_bytes: {job.images.max_b64_bytes} is above {profile.id}'s "
            f"limit of {profile.max_image_b64_bytes}"
        )
    if job.images.max_edge is not None and job.images.max_edge > profile.native_edge:
        raise ConfigError(
            f"{where}: images.max_edge: {job.images.max_edge} is above {profile.id}'s native "
            f"{profile.native_edge} px (the API would shrink it again)"
        )
    if job.images.max_image_tokens is not None and job.images.max_image_tokens > profile.image_token_budget:
        raise ConfigError(
            f"{where}: images.max_image_tokens: {job.images.max_image_tokens} is above "
            f"{profile.id}'s budget of {profile.image_token_budget}"
        )
