"""GET /v1/models and /v1/models/{model_id}, from the model registry.

Every model the registry knows and the simulator's date has not retired is listed, in the
registry's order (``configs/models.toml`` lists the newest first), paged as the API pages:
``limit`` (1..1000, default 20), ``after_id`` / ``before_id`` cursors, and ``first_id``,
``last_id``, ``has_more`` in the answer. Any of a model's names (id, dated id, alias) finds it;
an unknown or retired one is a 404 ``not_found_error``.

With ``SimConfig.models_route_missing`` set, both routes play a gateway that lacks them: that
status, with a body a gateway would send (JSON of another shape, plain text, HTML), never the API's
``{"type": "error", ...}``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from batcher import facts
from batcher.models import ModelProfile
from batcher.simulator.core import Simulator
from batcher.simulator.errors import ApiError, invalid
from batcher.simulator.wire import JSON, parse_limit

_EPOCH = dt.date(1970, 1, 1)
#: Capabilities the profiles do not track; the simulator reports them unsupported.
_PLAIN_CAPABILITIES = ("citations", "code_execution", "pdf_input")


def _support(flag: bool) -> dict[str, bool]:
    return {"supported": flag}


def capabilities(profile: ModelProfile) -> dict[str, Any]:
    """The ``ModelCapabilities`` object for a profile (every key the schema requires)."""
    thinking = profile.can("thinking")
    effort = profile.can("effort")
    caps: dict[str, Any] = {
        key: _support(profile.can(key))
        for key in ("batch", "image_input", "structured_outputs", *_PLAIN_CAPABILITIES)
    }
    caps["context_management"] = {
        "supported": profile.can("context_management"),
        "clear_thinking_20251015": None,
        "clear_tool_uses_20250919": None,
        "compact_20260112": None,
    }
    caps["effort"] = {"supported": effort, **{level: _support(effort) for level in facts.EFFORT_LEVELS}}
    # Models that refuse sampling parameters refuse manual ("enabled") thinking too.
    caps["thinking"] = {
        "supported": thinking,
        "types": {"adaptive": _support(thinking), "enabled": _support(thinking and profile.sampling_params)},
    }
    return caps


def model_info(profile: ModelProfile) -> dict[str, Any]:
    """The ``ModelInfo`` object for a profile."""
    created = profile.created_at or _EPOCH
    return {
        "type": "model",
        "id": profile.id,
        "display_name": profile.display_name,
        "created_at": f"{created.isoformat()}T00:00:00Z",
        "max_input_tokens": profile.context_window,
        "max_tokens": profile.max_output_tokens,
        "capabilities": capabilities(profile),
    }


def _live(sim: Simulator) -> list[ModelProfile]:
    today = sim.config.current_date()
    return [p for p in sim.registry.all() if not p.is_retired(today)]


def page(
    models: list[ModelProfile], limit: int, after_id: str | None, before_id: str | None
) -> dict[str, Any]:
    """One page of ``models`` as the API pages a list (cursors are model ids)."""
    if after_id is not None and before_id is not None:
        raise invalid("", "after_id and before_id cannot both be given")
    ids = [p.id for p in models]
    if after_id is not None:
        start = _cursor(ids, after_id, "after_id") + 1
        chosen, has_more = models[start : start + limit], start + limit < len(models)
    elif before_id is not None:
        end = _cursor(ids, before_id, "before_id")
        chosen, has_more = models[max(0, end - limit) : end], end - limit > 0
    else:
        chosen, has_more = models[:limit], limit < len(models)
    data = [model_info(p) for p in chosen]
    return {
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _cursor(ids: list[str], cursor: str, name: str) -> int:
    try:
        return ids.index(cursor)
    except ValueError:
        raise invalid(name, f"no model with id {cursor!r} in this list") from None


#: What gateways answer for a route they do not have (Kong's JSON, a bare 405, an HTML page).
_GATEWAY_BODIES: dict[int, tuple[str, str]] = {
    404: ('{"message":"no Route matched with those values"}', "application/json"),
    405: ("Method Not Allowed", "text/plain"),
    501: ("<html><body><h1>501 Not Implemented</h1></body></html>", "text/html"),
}


def _gateway_without_route(sim: Simulator) -> Response | None:
    status = sim.config.models_route_missing
    if status is None:
        return None
    body, media_type = _GATEWAY_BODIES.get(status, ("Not Found", "text/plain"))
    return PlainTextResponse(body, status_code=status, media_type=media_type)


async def list_models(request: Request, sim: Simulator) -> Response:
    """GET /v1/models."""
    if (missing := _gateway_without_route(sim)) is not None:
        return missing
    query = request.query_params
    limit = parse_limit(query.get("limit"))
    return JSON(page(_live(sim), limit, query.get("after_id"), query.get("before_id")))


async def get_model(request: Request, sim: Simulator) -> Response:
    """GET /v1/models/{model_id}: any of the model's names; 404 when unknown or retired."""
    if (missing := _gateway_without_route(sim)) is not None:
        return missing
    model_id = request.path_params["model_id"]
    profile = sim.registry.get(model_id)
    if profile is None or profile.is_retired(sim.config.current_date()):
        raise ApiError(404, f"model: {model_id}")
    return JSON(model_info(profile))
