"""One planned request per row: its body, betas, token estimate and worst-case cost, computed once
and handed to both the budget (which holds the worst case) and the rate limiter (which takes the
estimate), in either mode. Also the job settings a run derives its requests from, and the pure
token and dollar arithmetic ``batcher estimate`` shares with the run. Pure: no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batcher.api.bodies import Example, RequestSettings, betas_for, messages_body
from batcher.config import JobConfig
from batcher.core.cache import CachePoint
from batcher.core.outcomes import Prepared
from batcher.core.structured import StructuredOutput
from batcher.cost import usage_cost
from batcher.images.sizing import ImageOptions
from batcher.models import ModelProfile
from batcher.tokens import estimate_body_tokens

#: The text estimate is a byte count, not the API's tokenizer: the budget's worst case pads it.
TEXT_SAFETY = 1.25


def settings_for(job: JobConfig) -> RequestSettings:
    """The job's ``[request]`` table as the settings every messages body is made with."""
    req = job.request
    return RequestSettings(
        max_tokens=req.max_tokens,
        system=req.system,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        effort=req.effort,
        stop_sequences=req.stop_sequences,
    )


def job_image_options(job: JobConfig) -> ImageOptions:
    """The job's ``[images]`` settings as :class:`ImageOptions`: the one mapping, shared by the run,
    ``batcher estimate`` and ``batcher prepare --job`` so the three never prepare differently."""
    imgs = job.images
    return ImageOptions(
        max_edge=imgs.max_edge,
        max_image_tokens=imgs.max_image_tokens,
        max_b64_bytes=imgs.max_b64_bytes,
        allow_truncated=imgs.allow_truncated,
    )


def unsized_image_tokens(profile: ModelProfile, options: ImageOptions) -> int:
    """The most an image of unknown size can cost: the model's budget, or the job's lower cap."""
    budget = profile.image_token_budget
    return min(budget, options.max_image_tokens) if options.max_image_tokens else budget


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


def row_cost(profile: ModelProfile, input_tokens: int, output_tokens: int, *, batch: bool) -> float:
    return usage_cost(profile, {"input_tokens": input_tokens, "output_tokens": output_tokens}, batch=batch)


def row_worst_cost(
    profile: ModelProfile,
    tokens: RowTokens,
    max_tokens: int,
    *,
    batch: bool,
    cache: CachePoint | None = None,
) -> float:
    """The most a row may cost: its input (text padded by TEXT_SAFETY) and max_tokens of output.
    With a ``cache`` breakpoint the row may be the one that writes the prefix: the prefix's tokens
    (padded as text is) are priced at the write price of its TTL (1.25x or 2x the input price)
    instead of the input price; the budget's settle then takes the answer's real cost."""
    worst_in = tokens.image + math.ceil(tokens.text * TEXT_SAFETY)
    if cache is None or cache.prefix_tokens <= 0:
        return row_cost(profile, worst_in, max_tokens, batch=batch)
    written = min(worst_in, math.ceil(cache.prefix_tokens * TEXT_SAFETY))
    usage = {
        "input_tokens": worst_in - written,
        "output_tokens": max_tokens,
        "cache_creation_input_tokens": written,
    }
    return usage_cost(profile, usage, batch=batch, cache_ttl=cache.ttl)


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """A prepared row's request, as sent: what the budget holds and what the limiter counts."""

    body: dict[str, Any]
    betas: list[str]
    tokens: RowTokens
    max_tokens: int
    #: the most the request may cost, at the price of the mode it is sent in
    worst_usd: float
    #: the prompt-cache breakpoint it carries (batcher.core.cache), or None
    cache: CachePoint | None = None


@dataclass(frozen=True, slots=True)
class SharedPrefix:
    """What every row's request shares before its own turn, settled once a run before anything is
    sent: the few-shot examples (their images prepared once) and the cache breakpoint at the end
    of the shared prefix (:mod:`batcher.core.cache`; None: no breakpoint)."""

    examples: tuple[Example, ...] = ()
    cache: CachePoint | None = None
    #: the tokens of the examples' images, in body order (each as sent; by URL: the most it costs)
    image_tokens: tuple[int, ...] = ()

    @property
    def image_count(self) -> int:
        """Images every request carries before the row's own."""
        return sum(len(example.images) for example in self.examples)


NO_PREFIX = SharedPrefix()


@dataclass(frozen=True, slots=True)
class Planner:
    """Plans each prepared row's request for one job and model."""

    profile: ModelProfile
    settings: RequestSettings
    files_beta: str
    #: Message Batches: costs at the batch price
    batch: bool = False
    #: the job's [output] and its mode: the body asks for the schema (and its tokens are counted)
    output: StructuredOutput | None = None
    #: the examples and the cache breakpoint every row's request shares
    prefix: SharedPrefix = NO_PREFIX

    @classmethod
    def for_job(
        cls,
        job: JobConfig,
        profile: ModelProfile,
        output: StructuredOutput | None = None,
        prefix: SharedPrefix = NO_PREFIX,
    ) -> Planner:
        return cls(
            profile,
            settings_for(job),
            job.images.files_beta,
            batch=job.run.mode == "batch",
            output=output,
            prefix=prefix,
        )

    def plan(self, prepared: Prepared) -> PlannedRequest:
        # An image whose tokens are not known (one sent by URL) counts at the model's budget: the
        # most it can cost.
        unsized = self.profile.image_token_budget
        prefix = self.prefix
        images = [
            *prefix.image_tokens,
            *(s.tokens if s.tokens is not None else unsized for s in prepared.sent),
        ]
        structured = self.output.request if self.output is not None else None
        body = messages_body(
            self.profile,
            self.settings,
            prepared.parts,
            prepared.row.prompt,
            structured,
            examples=prefix.examples,
            cache=prefix.cache,
        )
        tokens = body_tokens(self.profile, body, images)
        max_tokens = self.settings.max_tokens
        return PlannedRequest(
            body=body,
            betas=betas_for(prepared.parts, self.files_beta),
            tokens=tokens,
            max_tokens=max_tokens,
            worst_usd=row_worst_cost(self.profile, tokens, max_tokens, batch=self.batch, cache=prefix.cache),
            cache=prefix.cache,
        )
