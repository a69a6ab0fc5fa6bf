"""``batcher estimate JOB``: what a job will cost and how long it will take, before anything is sent.

It reads the manifest and only the *headers* of the images (no pixels are decoded) and works out,
per row, the input tokens the run will send:

- image tokens exactly: each image's header size, sized as the run will send it
  (:func:`batcher.images.sizing.target_size` for the job's model and caps), then the patch rule;
  an image named by URL cannot be measured without downloading it, so it counts at the model's
  (or the job's) token budget, the most it can cost;
- text tokens by :mod:`batcher.tokens`, over the very body :func:`batcher.api.bodies.messages_body`
  builds (labels, prompt, system), optionally calibrated on a sample through ``count_tokens``.

Output is counted at its worst, ``max_tokens`` a row. Cost comes from the model's prices
(:func:`batcher.cost.usage_cost`, per row, so a long-prompt tier applies where it would), online
and at the Message Batches price. The time is what the job's ``[limits]`` allow.

The same per-row arithmetic is the budget's worst case (:func:`row_worst_cost`), so the estimate and
the cap never disagree about what a row may cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from batcher.api.bodies import ImagePart, RequestSettings, messages_body
from batcher.config import JobConfig
from batcher.cost import usage_cost
from batcher.images.sizing import ImageOptions, image_tokens, job_image_options, target_size
from batcher.models import ModelProfile
from batcher.records import Row
from batcher.tokens import estimate_body_tokens
from batcher.urls import is_url as _is_url

#: Rows read between two progress callbacks.
PROGRESS_EVERY = 1000


class EstimateError(Exception):
    """The estimate cannot be made (no key for ``--exact-sample``, the API refused the sample)."""


# --- pure arithmetic -----------------------------------------------------------------------------


def settings_for(job: JobConfig) -> RequestSettings:
    req = job.request
    return RequestSettings(max_tokens=req.max_tokens, system=req.system, temperature=req.temperature,
                           top_p=req.top_p, top_k=req.top_k, effort=req.effort,
                           stop_sequences=req.stop_sequences)


def unsized_image_tokens(profile: ModelProfile, options: ImageOptions) -> int:
    """The most an image of unknown size can cost: the model's budget, or the job's lower cap."""
    budget = profile.image_token_budget
    return min(budget, options.max_image_tokens) if options.max_image_tokens else budget


def sent_image_tokens(profile: ModelProfile, options: ImageOptions, size: tuple[int, int] | None,
                      images_in_request: int) -> int:
    """Visual tokens of one image whose upright header size is ``size`` (None: not known)."""
    if size is None:
        return unsized_image_tokens(profile, options)
    width, height = target_size(profile, *size, options=options, images_in_request=images_in_request)
    return image_tokens(profile, width, height)


@dataclass(frozen=True, slots=True)
class RowTokens:
    text: int
    image: int

    @property
    def input(self) -> int:
        return self.text + self.image


def body_tokens(profile: ModelProfile, body: dict[str, Any], images: Sequence[int]) -> RowTokens:
    """Estimated input tokens of a messages body whose n-th image costs ``images[n]`` tokens."""
    text, image = estimate_body_tokens(body, profile, lambda n, _block: images[n])
    return RowTokens(text, image)


def row_tokens(profile: ModelProfile, settings: RequestSettings, prompt: str,
               images: Sequence[int]) -> RowTokens:
    """Input tokens of the request for a row whose images cost ``images`` tokens each."""
    placeholders = [ImagePart("url", "") for _ in images]
    return body_tokens(profile, messages_body(profile, settings, placeholders, prompt), images)


def row_cost(profile: ModelProfile, input_tokens: int, output_tokens: int, *, batch: bool) -> float:
    return usage_cost(profile, {"input_tokens": input_tokens, "output_tokens": output_tokens}, batch=batch)


#: The text estimate is a byte count, not the API's tokenizer: the budget's worst case pads it.
TEXT_SAFETY = 1.25


def row_worst_cost(profile: ModelProfile, tokens: RowTokens, max_tokens: int, *, batch: bool) -> float:
    """The most a row may cost: its input (text padded by TEXT_SAFETY) and max_tokens of output."""
    worst_in = tokens.image + math.ceil(tokens.text * TEXT_SAFETY)
    return row_cost(profile, worst_in, max_tokens, batch=batch)


def run_time_s(rows: int, input_tokens: int, output_tokens: int, rpm: float | None, itpm: float | None,
               otpm: float | None) -> float | None:
    """Seconds the job needs at these per-minute limits (the tightest wins); None with no limits."""
    minutes = [amount / limit for amount, limit in ((rows, rpm), (input_tokens, itpm),
                                                    (output_tokens, otpm)) if limit]
    return max(minutes) * 60.0 if minutes else None


# --- the estimate --------------------------------------------------------------------------------


@dataclass
class Sample:
    """Input tokens of a few rows counted by the API, next to the estimate for the same rows."""

    rows: int
    input_tokens_exact: int
    input_tokens_estimated: int
    image_tokens: int

    @property
    def text_ratio(self) -> float:
        """How far the text estimate was off on the sample (exact / estimated, text only)."""
        estimated_text = self.input_tokens_estimated - self.image_tokens
        exact_text = self.input_tokens_exact - self.image_tokens
        return exact_text / estimated_text if estimated_text > 0 else 1.0


@dataclass
class Estimate:
    model: str
    mode: str
    rows: int = 0
    #: rows that cannot be sent (a bad manifest row, an image whose header cannot be read)
    rows_failing: int = 0
    images: int = 0
    #: images named by URL: counted at the budget, the most they can cost
    images_unsized: int = 0
    text_tokens: int = 0
    image_tokens: int = 0
    output_tokens_max: int = 0
    cost_usd_online: float = 0.0
    cost_usd_batch: float = 0.0
    #: the same with no output at all: the floor under the bill
    cost_usd_input_online: float = 0.0
    cost_usd_input_batch: float = 0.0
    time_s: float | None = None
    #: which limits ``time_s`` is at: learned by the job's last run, or its [limits] / tier
    limits_source: str | None = None
    budget_usd: float | None = None
    sample: Sample | None = None
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def input_tokens(self) -> int:
        return self.text_tokens + self.image_tokens

    def add(self, profile: ModelProfile, tokens: RowTokens, images: int, max_tokens: int) -> None:
        self.rows += 1
        self.images += images
        self.text_tokens += tokens.text
        self.image_tokens += tokens.image
        self.output_tokens_max += max_tokens
        for batch in (False, True):
            full = row_cost(profile, tokens.input, max_tokens, batch=batch)
            floor = row_cost(profile, tokens.input, 0, batch=batch)
            if batch:
                self.cost_usd_batch += full
                self.cost_usd_input_batch += floor
            else:
                self.cost_usd_online += full
                self.cost_usd_input_online += floor

    def fail(self, error_type: str) -> None:
        self.rows += 1
        self.rows_failing += 1
        self.failures[error_type] = self.failures.get(error_type, 0) + 1

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_tokens"] = self.input_tokens
        for key in ("cost_usd_online", "cost_usd_batch", "cost_usd_input_online", "cost_usd_input_batch"):
            out[key] = round(out[key], 8)
        if self.sample is not None:
            out["sample"]["text_ratio"] = round(self.sample.text_ratio, 4)
        return out

    def calibrate(self, profile: ModelProfile, sample: Sample, max_tokens: int) -> None:
        """Scale the text estimate by what the API counted on a sample; costs follow.

        Costs are rescaled row-free (input at the base price): exact for every model below its
        long-prompt threshold, which a captioning row is nowhere near.
        """
        self.sample = sample
        ratio = sample.text_ratio
        old_input = self.input_tokens
        self.text_tokens = round(self.text_tokens * ratio)
        delta = self.input_tokens - old_input
        for batch in (False, True):
            extra = row_cost(profile, delta, 0, batch=batch)
            if batch:
                self.cost_usd_batch += extra
                self.cost_usd_input_batch += extra
            else:
                self.cost_usd_online += extra
                self.cost_usd_input_online += extra


def row_sizes(row: Row, options: ImageOptions) -> list[tuple[int, int] | None]:
    """Each image's upright header size (None for a URL); raises the image's ``ImageError``."""
    from batcher.images.prepare import probe_size

    sizes: list[tuple[int, int] | None] = []
    for source in row.images:
        if _is_url(source):
            sizes.append(None)
            continue
        width, height, _format = probe_size(source, options)
        sizes.append((width, height))
    return sizes


def estimate_rows(rows: Any, job: JobConfig, profile: ModelProfile,
                  progress: Any = None) -> Estimate:
    """Walk the manifest's rows (an iterable of :class:`Row`), reading image headers only."""
    from batcher.images.errors import ImageError

    settings = settings_for(job)
    options = job_image_options(job)
    est = Estimate(model=profile.id, mode=job.run.mode, budget_usd=job.limits.budget_usd)
    for n, row in enumerate(rows, start=1):
        if progress is not None and n % PROGRESS_EVERY == 0:
            progress(n)
        if row.error is not None:
            est.fail(row.error.error_type)
            continue
        try:
            sizes = row_sizes(row, options)
        except ImageError as exc:
            est.fail(getattr(exc, "error_type", "image_error"))
            continue
        per_image = [sent_image_tokens(profile, options, size, len(sizes)) for size in sizes]
        est.images_unsized += sum(1 for size in sizes if size is None)
        est.add(profile, row_tokens(profile, settings, row.prompt, per_image), len(per_image),
                settings.max_tokens)
    (rpm, itpm, otpm), est.limits_source = limits_for(job)
    est.time_s = run_time_s(est.rows - est.rows_failing, est.input_tokens, est.output_tokens_max,
                            rpm, itpm, otpm)
    return est


def limits_for(job: JobConfig) -> tuple[tuple[float | None, float | None, float | None], str]:
    """The per-minute limits a run of ``job`` would meet: those its last run learned from the
    API's headers when there is one, else the job's [limits] over its tier (as the run starts)."""
    from batcher.ratelimit import seed_limits

    learned = _saved_state(job, "rate_limits")
    limits = (learned or {}).get("limits") or {}
    if learned and learned.get("source") == "API headers" and any(limits.values()):
        return (limits.get("requests"), limits.get("input-tokens"), limits.get("output-tokens")), \
            "the limits the job's last run learned from the API"
    lim = job.limits
    seed, source = seed_limits(lim.tier, lim.rpm, lim.itpm, lim.otpm)
    return (seed.rpm, seed.itpm, seed.otpm), f"{source} limits (the run learns the real ones)"


def _saved_state(job: JobConfig, key: str) -> Any:
    """A value the job's earlier runs kept in its state (None without a state); opens nothing new."""
    from batcher.state import STATE_FILE, JobState, StateError

    out = job.output_dir(None)
    if not (out / STATE_FILE).is_file():
        return None
    try:
        with JobState.open(out) as state:
            return state.get_meta(key)
    except StateError:
        return None


# --- an exact sample through count_tokens --------------------------------------------------------

#: Top-level fields ``count_tokens`` takes from a messages body (the rest it refuses).
COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "output_config")


def count_body(body: dict[str, Any]) -> dict[str, Any]:
    """A messages body cut down to what ``count_tokens`` accepts."""
    return {k: v for k, v in body.items() if k in COUNT_FIELDS}


def sample_stride(sendable_rows: int, n: int) -> int:
    """Take every k-th sendable row so ``n`` of them spread over the whole manifest (its first rows
    are often unlike the rest: a manifest sorted by source, image count or prompt)."""
    return max(1, sendable_rows // max(1, n))


async def exact_sample(rows: Any, job: JobConfig, profile: ModelProfile, n: int, client: Any,
                       stride: int = 1) -> Sample:
    """Prepare ``n`` sendable rows, every ``stride``-th, as the run would; the API counts them.

    Images go as base64 whatever the job's transport: ``count_tokens`` counts the same pixels.
    """
    import base64

    import anyio.to_thread

    from batcher.images.errors import ImageError
    from batcher.images.prepare import prepare_file

    settings = settings_for(job)
    options = job_image_options(job)
    sample = Sample(rows=0, input_tokens_exact=0, input_tokens_estimated=0, image_tokens=0)
    sendable = -1
    for row in rows:
        if sample.rows >= n:
            break
        if row.error is not None or any(_is_url(s) for s in row.images):
            continue
        sendable += 1
        if sendable % stride:
            continue
        try:
            prepared = [await anyio.to_thread.run_sync(prepare_file, s, profile, options, len(row.images))
                        for s in row.images]
        except ImageError:
            continue
        parts = [ImagePart("base64", base64.b64encode(p.data).decode("ascii"), p.media_type)
                 for p in prepared]
        body = messages_body(profile, settings, parts, row.prompt)
        tokens = body_tokens(profile, body, [p.tokens for p in prepared])
        sample.input_tokens_exact += await client.count_tokens(count_body(body))
        sample.input_tokens_estimated += tokens.input
        sample.image_tokens += tokens.image
        sample.rows += 1
    return sample


# --- the command ---------------------------------------------------------------------------------


def format_estimate(est: Estimate) -> str:
    """The human-readable estimate, a few aligned lines."""
    lines = [f"model {est.model}, mode {est.mode}"]
    lines.append(f"  rows          {est.rows:>14,}" + (f"  ({est.rows_failing:,} cannot be sent: "
                 + ", ".join(f"{k} {v:,}" for k, v in sorted(est.failures.items())) + ")"
                 if est.rows_failing else ""))
    lines.append(f"  images        {est.images:>14,}" + (f"  ({est.images_unsized:,} by URL, counted "
                 "at the budget)" if est.images_unsized else ""))
    lines.append(f"  input tokens  {est.input_tokens:>14,}  (images {est.image_tokens:,} exact, "
                 f"text {est.text_tokens:,} estimated)")
    if est.sample is not None:
        s = est.sample
        lines.append(f"  sample        {s.rows:>14,} rows counted by the API: {s.input_tokens_exact:,} "
                     f"tokens vs {s.input_tokens_estimated:,} estimated (text x{s.text_ratio:.3f})")
    lines.append(f"  output tokens {est.output_tokens_max:>14,}  at most (max_tokens x rows)")
    lines.append(f"  cost online   {_usd(est.cost_usd_online):>14}  at most "
                 f"({_usd(est.cost_usd_input_online)} of it input)")
    lines.append(f"  cost batch    {_usd(est.cost_usd_batch):>14}  at most "
                 f"({_usd(est.cost_usd_input_batch)} of it input; most batches end within an hour, "
                 "all within 24 h)")
    if est.time_s is not None:
        lines.append(f"  time online   {_duration(est.time_s):>14}  at {est.limits_source}")
    else:
        lines.append("  time online   ?  (no limits known: set [limits] rpm/itpm/otpm)")
    if est.budget_usd is not None:
        worst = est.cost_usd_batch if est.mode == "batch" else est.cost_usd_online
        verdict = "fits" if worst <= est.budget_usd else "may stop the run before the end"
        lines.append(f"  budget        {_usd(est.budget_usd):>14}  {verdict}")
    return "\n".join(lines)


def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def _duration(seconds: float) -> str:
    seconds = math.ceil(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def load(job_path: Any) -> tuple[JobConfig, ModelProfile]:
    """The job and its model's profile; raises ``ConfigError`` naming the key."""
    from batcher.config import ConfigError, check_against_model, job_registry, load_job

    job = load_job(job_path)
    registry = job_registry(job)
    profile = registry.get(job.request.model)
    if profile is None:
        # A model the table lacks: the profile its first run probed through count_tokens.
        from batcher.probe import from_meta

        probed = _saved_state(job, f"model_probe:{job.request.model}")
        if probed is None:
            raise ConfigError(f"{job.path}: request.model: {job.request.model!r} is not in batcher's "
                              "model table (see `batcher models`); `batcher run` probes it once, "
                              "after which it can be estimated, or add it under [models]")
        profile = from_meta(probed, registry)
    check_against_model(job, profile)
    return job, profile


def estimate_job(job: JobConfig, profile: ModelProfile, *, exact_sample_rows: int = 0,
                 progress: Any = None) -> Estimate:
    """The whole estimate for a job; ``exact_sample_rows`` > 0 calibrates text on the API."""
    from batcher.manifest import open_manifest

    manifest = open_manifest(job.manifest_path, id_column=job.input.id_column,
                             image_column=job.input.image_column,
                             prompt_column=job.input.prompt_column, prompt_template=job.input.prompt)
    manifest.check()
    est = estimate_rows(manifest.rows(), job, profile, progress)
    if exact_sample_rows > 0:
        import anyio

        stride = sample_stride(est.rows - est.rows_failing, exact_sample_rows)
        sample = anyio.run(_sample, manifest, job, profile, exact_sample_rows, stride)
        if sample.rows:
            est.calibrate(profile, sample, job.request.max_tokens)
    return est


async def _sample(manifest: Any, job: JobConfig, profile: ModelProfile, n: int, stride: int) -> Sample:
    from batcher.api import errors
    from batcher.api.client import Client, MissingKeyError, settings_from_env

    try:
        key, base_url = settings_from_env()
    except MissingKeyError as exc:
        raise EstimateError(f"--exact-sample: {exc}") from None
    try:
        async with Client(key, base_url, max_connections=2, timeout_s=120.0) as client:
            return await exact_sample(manifest.rows(), job, profile, n, client, stride)
    except errors.APIError as exc:
        raise EstimateError(f"--exact-sample: count_tokens failed: {exc}") from None
