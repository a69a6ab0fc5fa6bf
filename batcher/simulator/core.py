"""The simulator's state, and the one path a messages body takes through it.

``Simulator`` owns the config, the model registry, the ledger, the prompt cache, the rate-limit
buckets, the fault injector and the Files and Batches stores, and wires them together: the parts
below it never import it (validation reads it through :class:`batcher.simulator.validate.Context`,
the batch store answers through the callable it is given). Route handlers receive it; nothing in
here speaks HTTP.

One code path answers a messages body wherever it comes from: :func:`process` (validate, count,
answer; pure apart from the prompt cache) and :func:`record` (charge the ledger) serve both the
live endpoint (:mod:`batcher.simulator.messages`) and the Message Batches store, which calls them
without rate limits, faults or latency (:meth:`Simulator.answer_batch_request`). Batch requests
use the prompt cache's batch namespace, and hit it only on a best-effort basis
(``SimConfig.batches.cache_hit``, drawn per ``custom_id``: :func:`~batcher.simulator.promptcache.batch_hit`).

The prompt cache's clock is the monotonic clock plus ``SimConfig.cache_clock_skew_s``, so a test
(``POST /_control {"cache_clock_skew_s": 301}``) can let 5-minute entries expire without waiting.

The model registry is the packaged ``configs/models.toml`` alone (:func:`api_registry`): it stands
for what the API knows, so a user's overrides (``$BATCHER_MODELS``, ``~/.config/batcher/models.toml``)
and a job's ``[models]`` table, which describe what the *client* believes, never reach it. A client
misconfigured by them must fail against the simulator as it would against the API.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, field
from typing import Any

from batcher import facts
from batcher.models import ModelProfile, ModelRegistry, build_registry, packaged_models_path
from batcher.simulator.answers import Processed, answer, find_nonces
from batcher.simulator.batchstore import BatchStore
from batcher.simulator.buckets import Buckets
from batcher.simulator.config import SimConfig
from batcher.simulator.errors import ApiError
from batcher.simulator.faults import FaultInjector
from batcher.simulator.filestore import FileStore
from batcher.simulator.ledger import Ledger
from batcher.simulator.promptcache import BATCH, ONLINE, PromptCache, batch_hit
from batcher.simulator.validate import Checked, check_body


def api_registry() -> ModelRegistry:
    """The models the API knows: the packaged table only, no user or job override layers."""
    with packaged_models_path().open("rb") as fh:
        return build_registry(tomllib.load(fh))


@dataclass
class Simulator:
    config: SimConfig = field(default_factory=SimConfig)
    registry: ModelRegistry = field(default_factory=api_registry)
    ledger: Ledger = field(default_factory=Ledger)
    # The parts, made from the fields above (not arguments; not part of equality or repr).
    prompt_cache: PromptCache = field(init=False, repr=False, compare=False)
    buckets: Buckets = field(init=False, repr=False, compare=False)
    faults: FaultInjector = field(init=False, repr=False, compare=False)
    files: FileStore = field(init=False, repr=False, compare=False)
    batches: BatchStore = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.prompt_cache = PromptCache(clock=lambda: time.monotonic() + self.config.cache_clock_skew_s)
        self.buckets = Buckets(self.config.limits)
        self.faults = FaultInjector(self.config.faults, self.config.latency, self.ledger)
        self.files = FileStore(self.ledger)
        self.batches = BatchStore(lambda: self.config.batches, self.answer_batch_request)

    def close(self) -> None:
        """Stop what runs in the background (the Message Batches ticker)."""
        self.batches.close()

    def reconfigure(self) -> None:
        """Let the parts pick up a config changed at run time (``POST /_control``)."""
        self.buckets.configure(self.config.limits)
        self.faults.configure(self.config.faults, self.config.latency)

    def model(self, name: object, path: str = "model") -> ModelProfile:
        """The profile for a requested model id; 404 for unknown or retired ids, as the API."""
        if not isinstance(name, str) or not name:
            problem = "Field required" if name is None else "Input should be a valid string"
            raise ApiError(400, f"{path}: {problem}")
        profile = self.registry.get(name)
        if profile is None or profile.is_retired(self.config.current_date()):
            raise ApiError(404, f"model: {name}")
        return profile

    @property
    def max_image_b64_bytes_cap(self) -> int | None:
        """Bedrock and Vertex take 5 MB an image whatever the model; None on the Claude API."""
        return None if self.config.platform == "anthropic" else facts.PORTABLE_IMAGE_B64_BYTES

    def answer_batch_request(
        self, params: dict[str, Any], betas: frozenset[str], custom_id: str = ""
    ) -> dict[str, Any]:
        """A batch request's message, billed at the batch price; ``ApiError`` for a bad one. Its
        cache lookups use the batch namespace and hit with the configured best-effort share."""
        clock = self.config.batches
        hit = batch_hit(clock.seed, custom_id, clock.cache_hit)
        processed = process(params, self, betas=betas, namespace=BATCH, hit=hit)
        record(self, processed)
        used = processed.cache
        self.ledger.charge_batch(
            input_tokens=processed.input_tokens,
            output_tokens=processed.output_tokens,
            cache_read=used.read,
            cache_write_5m=used.write_5m,
            cache_write_1h=used.write_1h,
        )
        return processed.message


def process(
    body: object,
    sim: Simulator,
    *,
    betas: frozenset[str],
    path: str = "",
    namespace: str = ONLINE,
    hit: bool = True,
) -> Processed:
    """Validate and answer one messages body; raises ``ApiError`` for a bad one.

    ``path`` prefixes every error path (``requests.3.params``). No rate limit, error fault or
    latency; the answer faults (refusal, mismatch) are drawn, as for a live request. The prompt
    cache is used in ``namespace``; ``hit`` False makes a lookup that would hit miss.
    """
    checked = check_body(body, sim, betas=betas, path=path)
    return answer(checked, sim.prompt_cache, answer_fault(sim, checked), namespace=namespace, hit=hit)


def answer_fault(sim: Simulator, checked: Checked) -> str | None:
    """The answer fault (refusal, mismatch) drawn for a checked body about to be answered."""
    structured = checked.output_schema is not None or checked.forced_tool is not None
    return sim.faults.answer_fault(find_nonces(checked.prompt_texts), structured)


def record(sim: Simulator, processed: Processed) -> None:
    """Bill an answered body: tokens and nonces to the ledger, and the images it saw."""
    sim.ledger.charge(
        input_tokens=processed.input_tokens,
        output_tokens=processed.output_tokens,
        image_tokens=processed.image_tokens,
        nonces=processed.nonces,
        cache_read=processed.cache.read,
        cache_write_5m=processed.cache.write_5m,
        cache_write_1h=processed.cache.write_1h,
        cache_breakpoint=processed.cache.breakpoints > 0,
    )
    sim.ledger.saw_images(processed.images)
