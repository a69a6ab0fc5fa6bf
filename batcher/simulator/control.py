"""Endpoints outside ``/v1`` for tests and benchmarks: read the ledger, change settings live."""

from __future__ import annotations

import copy
import datetime as dt
import math
import types
import typing
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from batcher.simulator.buckets import Buckets
from batcher.simulator.config import BatchClock
from batcher.simulator.core import Simulator
from batcher.simulator.errors import ApiError
from batcher.simulator.faults import FaultInjector
from batcher.simulator.wire import JSON, read_json

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


async def ledger(request: Request, sim: Simulator) -> Response:
    return JSON(sim.ledger.snapshot())


def _apply(target: DataclassInstance, changes: dict[str, Any], path: str) -> None:
    """Set ``changes`` on the dataclass ``target``, each value checked against its field's type
    (400 naming the key otherwise); nested dataclasses take nested objects."""
    hints = typing.get_type_hints(type(target))
    names = {f.name for f in fields(target)}
    for key, value in changes.items():
        where = f"{path}{key}"
        if key not in names:
            raise ApiError(400, f"{where}: unknown setting")
        current = getattr(target, key)
        if is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, dict):
                raise ApiError(400, f"{where}: expected an object of settings, got {_shown(value)}")
            _apply(current, value, f"{where}.")
        else:
            setattr(target, key, _typed(hints[key], value, where))


def _typed(kind: object, value: object, where: str) -> object:
    """``value`` as a setting of type ``kind`` (``float | None``, ``int``, a ``Literal``, a date),
    or the API's 400 naming ``where``."""
    options = typing.get_args(kind) if typing.get_origin(kind) in (types.UnionType, typing.Union) else (kind,)
    if value is None:
        if type(None) in options:
            return None
        raise ApiError(400, f"{where}: must not be null")
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue  # JSON true/false is not a number
        if option is float and isinstance(value, int | float):
            if not math.isfinite(value):
                break
            return float(value)
        if option is int and isinstance(value, int):
            return value
        if option is str and isinstance(value, str):
            return value
        if option is dt.date and isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                raise ApiError(
                    400, f"{where}: expected an ISO date (YYYY-MM-DD), got {_shown(value)}"
                ) from None
        if typing.get_origin(option) is typing.Literal and value in typing.get_args(option):
            return value
    raise ApiError(400, f"{where}: expected {_describe(options)}, got {_shown(value)}")


_KIND_WORDS: dict[object, str] = {
    float: "a number",
    int: "an integer",
    str: "a string",
    bool: "a boolean",
    dt.date: "an ISO date (YYYY-MM-DD)",
}


def _describe(options: tuple[object, ...]) -> str:
    words = []
    for option in options:
        if option is type(None):
            words.append("null")
        elif typing.get_origin(option) is typing.Literal:
            words.append("one of " + ", ".join(repr(v) for v in typing.get_args(option)))
        else:
            words.append(_KIND_WORDS.get(option, str(option)))
    return " or ".join(words)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_batch_clock(clock: BatchClock) -> None:
    if clock.duration_s < 0:
        raise ApiError(400, f"batches.duration_s: must not be negative, got {clock.duration_s:g}")
    if not 0.0 <= clock.expire_share <= 1.0:
        raise ApiError(400, f"batches.expire_share: a share must be within 0..1, got {clock.expire_share:g}")
    if not 0.0 <= clock.cache_hit <= 1.0:
        raise ApiError(400, f"batches.cache_hit: a share must be within 0..1, got {clock.cache_hit:g}")


async def update(request: Request, sim: Simulator) -> Response:
    """Merge a JSON object into the live config (``{"faults": {"overloaded": 0.1}}``).

    Every value is checked against its setting's type and range before anything changes; a bad
    one is a 400 in the API's error shape whose message starts with the setting's dotted path
    (``limits.rpm: expected a number or null, got 'abc'``)."""
    changes = await read_json(request)
    if not isinstance(changes, dict):
        raise ApiError(400, "expected a JSON object of settings")
    # Try the changes on a copy first, so settings the simulator refuses leave it as it was.
    trial = copy.deepcopy(sim.config)
    _apply(trial, changes, "")
    Buckets(trial.limits)
    FaultInjector(trial.faults, trial.latency)
    _check_batch_clock(trial.batches)
    _apply(sim.config, changes, "")
    sim.reconfigure()
    return JSON({"ok": True})
