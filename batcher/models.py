"""Model profiles: every per-model number batcher uses, read from ``configs/models.toml``.

No other module knows a model's native size, budget, limits or prices: they ask a
:class:`ModelProfile` from a :class:`ModelRegistry`. A job file or a user config may add a model
or override any field (see :func:`load_registry`). Pure data and pure functions; no I/O beyond
reading the TOML files named.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from batcher import facts
from batcher.errors import JobError
from batcher.exits import EXIT_CONFIG

Lifecycle = Literal["active", "legacy", "deprecated"]
_LIFECYCLES = ("active", "legacy", "deprecated")


class ModelConfigError(JobError, ValueError):
    """A model table that cannot be used; the message names the file and the key."""

    exit_code = EXIT_CONFIG


@dataclass(frozen=True, slots=True)
class LongPromptTier:
    above_tokens: int
    input: float
    output: float


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens."""

    input: float
    output: float
    cache_read: float
    cache_write_5m: float
    cache_write_1h: float
    batch_discount: float = 0.5
    long_prompt: LongPromptTier | None = None

    def for_prompt(self, input_tokens: int) -> tuple[float, float]:
        """(input, output) per-million prices for a prompt of this many input tokens."""
        tier = self.long_prompt
        if tier is not None and input_tokens > tier.above_tokens:
            return tier.input, tier.output
        return self.input, self.output


@dataclass(frozen=True, slots=True)
class ModelProfile:
    id: str
    display_name: str
    ids: tuple[str, ...]
    lifecycle: Lifecycle
    retires: dt.date | None
    created_at: dt.date | None
    context_window: int
    max_output_tokens: int
    images_per_request: int
    native_edge: int
    image_token_budget: int
    budget_confirmed: bool
    max_image_b64_bytes: int
    sampling_params: bool
    #: temperature and top_p may not both be set (a 400 on every model that takes them today)
    sampling_one_of: bool
    forced_tool_use: bool
    text_token_factor: float
    #: the shortest prefix a cache_control breakpoint caches (below it: nothing, silently); None:
    #: not known (a profile that does not say), and the cache decision says so
    min_cacheable_tokens: int | None
    capabilities: Mapping[str, bool]
    prices: Prices
    source: str = field(default="configs/models.toml", compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name that resolves to this model: its id first, then dated ids and aliases."""
        return (self.id, *self.ids)

    def is_retired(self, today: dt.date) -> bool:
        return self.retires is not None and today > self.retires

    def native_size(self, width: int, height: int) -> tuple[int, int]:
        """The size this model sees an image at (the API's own resize for this model)."""
        return facts.api_resize(width, height, self.native_edge, self.image_token_budget)

    def image_tokens(self, width: int, height: int) -> int:
        """Tokens this model charges for an image sent at ``width`` x ``height``."""
        return facts.visual_tokens(*self.native_size(width, height))

    def can(self, capability: str) -> bool:
        return bool(self.capabilities.get(capability, False))


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two TOML tables; ``over`` wins key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_INT_FIELDS = (
    "context_window",
    "max_output_tokens",
    "images_per_request",
    "native_edge",
    "image_token_budget",
    "max_image_b64_bytes",
)
#: Positive integers a profile may leave out (None: not known).
_OPTIONAL_INT_FIELDS = ("min_cacheable_tokens",)
_BOOL_FIELDS = ("budget_confirmed", "sampling_params", "sampling_one_of", "forced_tool_use")
_KNOWN_FIELDS = frozenset(
    (
        *_INT_FIELDS,
        *_OPTIONAL_INT_FIELDS,
        *_BOOL_FIELDS,
        "display_name",
        "ids",
        "lifecycle",
        "retires",
        "created_at",
        "text_token_factor",
        "capabilities",
        "prices",
    )
)
_PRICE_FIELDS = frozenset(
    (
        "input",
        "output",
        "cache_read",
        "cache_write_5m",
        "cache_write_1h",
        "batch_discount",
        "long_prompt",
        "cache_read_multiplier",
        "cache_write_5m_multiplier",
        "cache_write_1h_multiplier",
    )
)


def _need(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise ModelConfigError(f"{where}.{key}: missing")
    value = table[key]
    # bool is an int subclass: a `true` where a number belongs is still a mistake
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ModelConfigError(f"{where}.{key}: expected {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _prices(table: Mapping[str, Any], where: str) -> Prices:
    unknown = set(table) - _PRICE_FIELDS
    if unknown:
        raise ModelConfigError(f"{where}.{sorted(unknown)[0]}: unknown price field")
    num = (int, float)
    base_in = float(_need(table, "input", num, where))
    long_prompt = None
    if "long_prompt" in table:
        lp = table["long_prompt"]
        lw = f"{where}.long_prompt"
        long_prompt = LongPromptTier(
            above_tokens=int(_need(lp, "above_tokens", int, lw)),
            input=float(_need(lp, "input", num, lw)),
            output=float(_need(lp, "output", num, lw)),
        )

    def priced(key: str) -> float:
        if key in table:
            return float(_need(table, key, num, where))
        return base_in * float(_need(table, f"{key}_multiplier", num, where))

    return Prices(
        input=base_in,
        output=float(_need(table, "output", num, where)),
        cache_read=priced("cache_read"),
        cache_write_5m=priced("cache_write_5m"),
        cache_write_1h=priced("cache_write_1h"),
        batch_discount=float(_need(table, "batch_discount", num, where)),
        long_prompt=long_prompt,
    )


def _profile(model_id: str, table: Mapping[str, Any], where: str, source: str) -> ModelProfile:
    unknown = set(table) - _KNOWN_FIELDS
    if unknown:
        raise ModelConfigError(f"{where}.{sorted(unknown)[0]}: unknown model field")
    lifecycle = _need(table, "lifecycle", str, where)
    if lifecycle not in _LIFECYCLES:
        raise ModelConfigError(f"{where}.lifecycle: expected one of {_LIFECYCLES}, got {lifecycle!r}")
    retires = table.get("retires")
    if retires is not None and not isinstance(retires, dt.date):
        raise ModelConfigError(f"{where}.retires: expected a date (YYYY-MM-DD), got {retires!r}")
    if lifecycle == "deprecated" and retires is None:
        raise ModelConfigError(f"{where}.retires: a deprecated model needs its retirement date")
    created = table.get("created_at")
    if created is not None and not isinstance(created, dt.date):
        raise ModelConfigError(f"{where}.created_at: expected a date, got {created!r}")
    ids = table.get("ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ModelConfigError(f"{where}.ids: expected a list of strings")
    ints = {k: _need(table, k, int, where) for k in _INT_FIELDS}
    optional = {k: _need(table, k, int, where) for k in _OPTIONAL_INT_FIELDS if k in table}
    for key, value in {**ints, **optional}.items():
        if value < 1:
            raise ModelConfigError(f"{where}.{key}: must be positive, got {value}")
    caps = _need(table, "capabilities", dict, where)
    return ModelProfile(
        id=model_id,
        display_name=str(table.get("display_name", model_id)),
        ids=tuple(ids),
        lifecycle=lifecycle,
        retires=retires,
        created_at=created,
        **ints,
        **{k: _need(table, k, bool, where) for k in _BOOL_FIELDS},
        min_cacheable_tokens=optional.get("min_cacheable_tokens"),
        text_token_factor=float(_need(table, "text_token_factor", (int, float), where)),
        capabilities={str(k): bool(v) for k, v in caps.items()},
        prices=_prices(_need(table, "prices", dict, where), f"{where}.prices"),
        source=source,
    )


class ModelRegistry:
    """Every known model, by id, dated id or alias."""

    def __init__(self, profiles: Iterable[ModelProfile]) -> None:
        self._profiles: dict[str, ModelProfile] = {}
        self._by_name: dict[str, ModelProfile] = {}
        for profile in profiles:
            self._profiles[profile.id] = profile
        for profile in self._profiles.values():
            for name in profile.names:
                self._by_name[name] = profile

    def get(self, name: str) -> ModelProfile | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> ModelProfile:
        profile = self.get(name)
        if profile is None:
            raise KeyError(name)
        return profile

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[ModelProfile]:
        return iter(self._profiles.values())

    def all(self) -> list[ModelProfile]:
        return list(self._profiles.values())

    def with_profile(self, profile: ModelProfile) -> ModelRegistry:
        """A registry that also knows ``profile`` (e.g. a probed model), replacing its id."""
        return ModelRegistry([*(p for p in self._profiles.values() if p.id != profile.id), profile])


def packaged_models_path() -> Path:
    """``configs/models.toml``: beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs" / "models.toml", here / "_configs" / "models.toml"):
        if candidate.is_file():
            return candidate
    raise ModelConfigError("configs/models.toml not found beside or inside the batcher package")


def user_models_path() -> Path | None:
    """The user's own model table: ``$BATCHER_MODELS`` or ``~/.config/batcher/models.toml``."""
    explicit = os.environ.get("BATCHER_MODELS")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = base / "batcher" / "models.toml"
    return path if path.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ModelConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ModelConfigError(f"{path}: not valid TOML: {exc}") from exc


def build_registry(
    base: Mapping[str, Any], layers: Iterable[tuple[str, Mapping[str, Any]]] = ()
) -> ModelRegistry:
    """Profiles from a base table plus override layers (``(source, {"models": {...}})``).

    A layer may override any field of a known model (by any of its names) or add a new model;
    a new model takes ``[defaults]`` for whatever it leaves out.
    """
    defaults = base.get("defaults", {})
    tables: dict[str, dict[str, Any]] = {
        mid: _merge(defaults, t) for mid, t in base.get("models", {}).items()
    }
    sources = dict.fromkeys(tables, "configs/models.toml")
    alias_of = {alias: mid for mid, t in tables.items() for alias in t.get("ids", [])}
    for source, layer in layers:
        for name, over in layer.get("models", {}).items():
            if not isinstance(over, Mapping):
                raise ModelConfigError(f"{source}: models.{name}: expected a table")
            mid = alias_of.get(name, name)
            tables[mid] = _merge(tables.get(mid, defaults), over)
            sources[mid] = source
    return ModelRegistry(
        _profile(mid, t, f"{sources[mid]}: models.{mid}", sources[mid]) for mid, t in tables.items()
    )


def load_registry(job_models: Mapping[str, Any] | None = None, job_source: str = "job file") -> ModelRegistry:
    """The packaged table, then the user's, then the job file's ``[models]`` table."""
    base_path = packaged_models_path()
    base = _read_toml(base_path)
    layers: list[tuple[str, Mapping[str, Any]]] = []
    user = user_models_path()
    if user is not None:
        layers.append((str(user), _read_toml(user)))
    if job_models:
        layers.append((job_source, {"models": job_models}))
    return build_registry(base, layers)
