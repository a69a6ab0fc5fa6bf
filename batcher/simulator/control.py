"""Endpoints outside ``/v1`` for tests and benchmarks: read the ledger, change settings live."""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import fields, is_dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from batcher.simulator.buckets import Buckets
from batcher.simulator.core import Simulator
from batcher.simulator.errors import ApiError
from batcher.simulator.faults import FaultInjector


async def ledger(request: Request, sim: Simulator) -> Response:
    from batcher.simulator.app import JSON

    return JSON(sim.ledger.snapshot())


def _apply(target: Any, changes: dict[str, Any], path: str) -> None:
    names = {f.name for f in fields(target)}
    for key, value in changes.items():
        if key not in names:
            raise ApiError(400, f"{path}{key}: unknown setting")
        current = getattr(target, key)
        if is_dataclass(current) and isinstance(value, dict):
            _apply(current, value, f"{path}{key}.")
        elif key == "today":
            setattr(target, key, dt.date.fromisoformat(value) if value else None)
        else:
            setattr(target, key, value)


async def update(request: Request, sim: Simulator) -> Response:
    """Merge a JSON object into the live config (``{"faults": {"overloaded": 0.1}}``)."""
    from batcher.simulator.app import JSON, read_json

    changes = await read_json(request)
    if not isinstance(changes, dict):
        raise ApiError(400, "expected a JSON object of settings")
    # Try the changes on a copy first, so settings the simulator refuses leave it as it was.
    trial = copy.deepcopy(sim.config)
    _apply(trial, changes, "")
    Buckets(trial.limits)
    FaultInjector(trial.faults, trial.latency)
    _apply(sim.config, changes, "")
    sim.reconfigure()
    return JSON({"ok": True})
