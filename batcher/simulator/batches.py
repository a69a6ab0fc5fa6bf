"""Message Batches routes: create, retrieve, list, cancel, results (JSON lines) and delete.

- ``POST /v1/messages/batches`` checks only the envelope up front, as the API does: the body size
  (``facts.BATCH_MAX_BYTES``, 413), 1..``facts.BATCH_MAX_REQUESTS`` requests, each
  ``{"custom_id", "params"}`` with no other key, ``custom_id`` matching
  ``facts.CUSTOM_ID_PATTERN`` and unique (400 naming ``requests.N.custom_id``), ``params`` an
  object. The one check on the params themselves: a model the registry knows but that lacks the
  ``batch`` capability is refused at once (400 naming ``requests.N.params.model``), as the API
  refuses such a batch; anything else wrong with ``params`` (an unknown model included) comes
  back later as that request's ``errored`` result.
- How a batch then moves (processing order, expiry, the background ticker, ``request_counts``,
  cancelling) is the store's business: :mod:`batcher.simulator.batchstore`. Looking at a batch
  (retrieve, list, cancel, results, delete) first processes what is due, on a worker thread so the
  event loop keeps serving.
- Results (``GET .../results``, ``application/x-jsonl``, in processing order) and ``DELETE`` are
  refused with a 400 until the batch has ended. ``results_url`` points back at this simulator.
- On Bedrock and Vertex the route does not exist (their batch inference is a different API): 404.
"""

from __future__ import annotations

from typing import Final

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from batcher import facts
from batcher.simulator.batchstore import Batch, BatchRequest
from batcher.simulator.core import Simulator
from batcher.simulator.errors import ApiError, invalid, not_found
from batcher.simulator.wire import JSON, betas_of, cursors, page

#: Bodies larger than this are parsed on a worker thread.
_HEAVY_BODY_BYTES: Final = 1024 * 1024


# --- checking a create body (pure) ------------------------------------------------------------------


def check_create(body: object, sim: Simulator) -> list[BatchRequest]:
    """The requests of a create body; ``ApiError`` (400) for a bad envelope."""
    if not isinstance(body, dict):
        raise invalid("", "Input should be a valid dictionary")
    for key in body:
        if key != "requests":
            raise invalid(key, "Extra inputs are not permitted")
    if "requests" not in body:
        raise invalid("requests", "Field required")
    raw = body["requests"]
    if not isinstance(raw, list):
        raise invalid("requests", "Input should be a valid list")
    if not raw:
        raise invalid("requests", "List should have at least 1 item after validation, not 0")
    if len(raw) > facts.BATCH_MAX_REQUESTS:
        raise invalid(
            "requests",
            f"List should have at most {facts.BATCH_MAX_REQUESTS} items after validation, not {len(raw)}",
        )
    seen: dict[str, int] = {}
    requests = []
    for i, item in enumerate(raw):
        request = _check_request(item, f"requests.{i}", sim)
        if request.custom_id in seen:
            raise invalid(
                f"requests.{i}.custom_id",
                f"Duplicate custom_id {request.custom_id!r}: also used by "
                f"requests.{seen[request.custom_id]}; custom_id must be unique in a batch",
            )
        seen[request.custom_id] = i
        requests.append(request)
    return requests


def _check_request(item: object, path: str, sim: Simulator) -> BatchRequest:
    if not isinstance(item, dict):
        raise invalid(path, "Input should be a valid dictionary")
    for key in item:
        if key not in ("custom_id", "params"):
            raise invalid(f"{path}.{key}", "Extra inputs are not permitted")
    for key in ("custom_id", "params"):
        if key not in item:
            raise invalid(f"{path}.{key}", "Field required")
    custom_id, params = item["custom_id"], item["params"]
    if not isinstance(custom_id, str):
        raise invalid(f"{path}.custom_id", "Input should be a valid string")
    if not facts.CUSTOM_ID_PATTERN.fullmatch(custom_id):
        raise invalid(f"{path}.custom_id", f"String should match pattern '{facts.CUSTOM_ID_PATTERN.pattern}'")
    if not isinstance(params, dict):
        raise invalid(f"{path}.params", "Input should be a valid dictionary")
    _check_batch_model(params.get("model"), f"{path}.params.model", sim)
    return BatchRequest(custom_id, params)


def _check_batch_model(name: object, path: str, sim: Simulator) -> None:
    """Refuse at once a known model that cannot run in batches; others are checked per request."""
    profile = sim.registry.get(name) if isinstance(name, str) else None
    if profile is not None and not profile.can("batch"):
        raise invalid(path, f"model {name!r} does not support the Message Batches API")


# --- the routes --------------------------------------------------------------------------------------


def _enter(request: Request, sim: Simulator) -> None:
    if sim.config.platform != "anthropic":
        raise not_found(
            f"{request.method} {request.url.path}: Message Batches are not available on {sim.config.platform}"
        )


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _current(sim: Simulator, batch: Batch) -> Batch:
    """The batch with everything due by now processed (off the event loop when there is work)."""
    if sim.batches.has_work(batch):
        await anyio.to_thread.run_sync(sim.batches.advance, batch)
    return batch


async def _found(request: Request, sim: Simulator) -> Batch:
    _enter(request, sim)
    batch_id = request.path_params["batch_id"]
    batch = sim.batches.get(batch_id)
    if batch is None:
        raise not_found(f"Message Batch not found: {batch_id}")
    return await _current(sim, batch)


async def _read_body(request: Request) -> object:
    body = await request.body()
    if len(body) > facts.BATCH_MAX_BYTES:
        raise ApiError(413, "Request exceeds the maximum allowed number of bytes.")
    try:
        if len(body) > _HEAVY_BODY_BYTES:
            return await anyio.to_thread.run_sync(orjson.loads, body)
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid("", f"Request body is not valid JSON: {exc}") from None


async def create(request: Request, sim: Simulator) -> Response:
    """POST /v1/messages/batches."""
    _enter(request, sim)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > facts.BATCH_MAX_BYTES:
        raise ApiError(413, "Request exceeds the maximum allowed number of bytes.")
    betas = betas_of(request)
    requests = check_create(await _read_body(request), sim)
    batch = sim.batches.create(requests, betas)
    return JSON(batch.to_json(_base_url(request)))


async def list_batches(request: Request, sim: Simulator) -> Response:
    """GET /v1/messages/batches: newest first, paged."""
    _enter(request, sim)
    limit, after, before = cursors(request, sim.batches.seq_of)
    base = _base_url(request)
    entries = []
    for batch in sim.batches.all():
        await _current(sim, batch)
        entries.append((batch.seq, batch.to_json(base)))
    return JSON(page(entries, limit, after, before))


async def retrieve(request: Request, sim: Simulator) -> Response:
    """GET /v1/messages/batches/{batch_id}: poll."""
    batch = await _found(request, sim)
    return JSON(batch.to_json(_base_url(request)))


async def cancel(request: Request, sim: Simulator) -> Response:
    """POST /v1/messages/batches/{batch_id}/cancel."""
    batch = await _found(request, sim)
    await anyio.to_thread.run_sync(sim.batches.cancel, batch)
    return JSON(batch.to_json(_base_url(request)))


async def results(request: Request, sim: Simulator) -> Response:
    """GET /v1/messages/batches/{batch_id}/results: JSON lines, once the batch has ended."""
    batch = await _found(request, sim)
    if not batch.ended:
        raise invalid(
            "",
            f"Message Batch {batch.id} has not finished processing: results are "
            "available once processing_status is `ended`",
        )
    return Response(batch.result_lines(), media_type="application/x-jsonl")


async def delete(request: Request, sim: Simulator) -> Response:
    """DELETE /v1/messages/batches/{batch_id}: only once ended."""
    batch = await _found(request, sim)
    if not batch.ended:
        raise invalid(
            "",
            f"Message Batch {batch.id} cannot be deleted while it is being "
            "processed: cancel it first, then delete it once it has ended",
        )
    sim.batches.remove(batch.id)
    return JSON({"id": batch.id, "type": "message_batch_deleted"})
