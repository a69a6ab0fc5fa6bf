"""The simulator's state and the seams between its parts.

``Simulator`` owns the config, the model registry, the ledger, the rate-limit buckets, the fault
injector and the Files and Batches stores. Route handlers receive it; nothing in here speaks HTTP.

The model registry is the packaged ``configs/models.toml`` alone (:func:`api_registry`): it stands
for what the API knows, so a user's overrides (``$BATCHER_MODELS``, ``~/.config/batcher/models.toml``)
and a job's ``[models]`` table, which describe what the *client* believes, never reach it. A client
misconfigured by them must fail against the simulator as it would against the API.
"""

from __future__ import annotations

import itertools
import secrets
import tomllib
from dataclasses import dataclass, field

from batcher.models import ModelProfile, ModelRegistry, build_registry, packaged_models_path
from batcher.simulator.config import SimConfig
from batcher.simulator.errors import ApiError
from batcher.simulator.ledger import Ledger

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """An id in the API's style (``msg_01...``), unique within the process."""
    return f"{prefix}_01{secrets.token_hex(8)}{next(_ids):06d}"


def api_registry() -> ModelRegistry:
    """The models the API knows: the packaged table only, no user or job override layers."""
    with packaged_models_path().open("rb") as fh:
        return build_registry(tomllib.load(fh))


@dataclass
class MessageCost:
    """What a messages request costs, known before it is answered."""

    #: what it counts toward ITPM: the prompt less what it reads from the prompt cache
    input_tokens: int
    max_tokens: int
    megapixels: float


@dataclass
class Simulator:
    config: SimConfig = field(default_factory=SimConfig)
    registry: ModelRegistry = field(default_factory=api_registry)
    ledger: Ledger = field(default_factory=Ledger)

    def __post_init__(self) -> None:
        # Imported here so each part stays a leaf module that core wires together.
        from batcher.simulator.batches import BatchStore
        from batcher.simulator.buckets import Buckets
        from batcher.simulator.faults import FaultInjector
        from batcher.simulator.files import FileStore

        self.buckets = Buckets(self.config.limits)
        self.faults = FaultInjector(self.config.faults, self.config.latency, self.ledger)
        self.files = FileStore(self)
        self.batches = BatchStore(self)

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
        from batcher import facts

        return None if self.config.platform == "anthropic" else facts.PORTABLE_IMAGE_B64_BYTES
