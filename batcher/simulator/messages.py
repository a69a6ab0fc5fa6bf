"""POST /v1/messages and /v1/messages/count_tokens.

One code path answers a messages body wherever it comes from: :func:`process` (validate, count,
answer; pure apart from the prompt cache) and :func:`record` (charge the ledger) serve both the
live endpoint here and the Message Batches runner, which calls them without rate limits, faults
or latency. The live endpoint wraps them in the API's order: rate-limit admission, injected
faults, latency, settlement, then the bill, which is charged even when the connection is then cut
(the API bills what it processed).
"""

from __future__ import annotations

from typing import Any, Final

import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response

from batcher.simulator.answers import Processed, answer, prompt_cache
from batcher.simulator.core import MessageCost, Simulator
from batcher.simulator.validate import check_body, parse_betas

__all__ = ["Processed", "betas_of", "count_tokens", "create", "process", "record"]

#: Bodies larger than this carry images: decoding them (base64, headers, mean colours) runs on a
#: worker thread so it does not stall the event loop that serves every other request.
_HEAVY_BODY_BYTES: Final = 64 * 1024


def betas_of(request: Request) -> frozenset[str]:
    """The request's ``anthropic-beta`` values (comma lists, header given once or more); 400 for
    a value the API does not know."""
    return parse_betas(request.headers.getlist("anthropic-beta"))


def process(body: Any, sim: Simulator, *, betas: frozenset[str], path: str = "") -> Processed:
    """Validate and answer one messages body; raises ``ApiError`` for a bad one.

    ``path`` prefixes every error path (``requests.3.params``). No rate limit, fault or latency.
    """
    return answer(check_body(body, sim, betas=betas, path=path), sim)


def record(sim: Simulator, processed: Processed) -> None:
    """Bill an answered body: tokens and nonces to the ledger, and the images it saw."""
    sim.ledger.charge(
        input_tokens=processed.input_tokens,
        output_tokens=processed.output_tokens,
        image_tokens=processed.image_tokens,
        nonces=processed.nonces,
    )
    sim.ledger.saw_images(processed.images)


def _is_heavy(request: Request) -> bool:
    length = request.headers.get("content-length", "")
    return length.isdigit() and int(length) > _HEAVY_BODY_BYTES


async def create(request: Request, sim: Simulator) -> Response:
    """POST /v1/messages."""
    from batcher.simulator.app import read_json

    betas = betas_of(request)
    body = await read_json(request)
    if _is_heavy(request):
        checked = await anyio.to_thread.run_sync(lambda: check_body(body, sim, betas=betas))
    else:
        checked = check_body(body, sim, betas=betas)
    # Cache reads do not count toward ITPM: admit the prompt less what the cache holds of it.
    cached = prompt_cache(sim).peek(checked)
    cost = MessageCost(checked.input_tokens - cached, checked.max_tokens, checked.megapixels)
    admission = sim.buckets.admit(cost)
    try:
        fate = await sim.faults.before(cost)
    except BaseException:
        # An injected failure produced no output: give back the output tokens admit() took.
        sim.buckets.settle(admission, 0)
        raise
    # Mean colours decode pixels: worth a thread hop only when there are many bytes to decode
    # (small images decode in well under the hop's own cost; file sources are not in the body).
    if sum(len(image.raw) for image in checked.images if image.raw is not None) > _HEAVY_BODY_BYTES:
        processed = await anyio.to_thread.run_sync(answer, checked, sim)
    else:
        processed = answer(checked, sim)
    await sim.faults.delay(cost, processed.output_tokens)
    read = processed.message["usage"]["cache_read_input_tokens"]
    sim.buckets.settle(admission, processed.output_tokens, processed.input_tokens - read)
    record(sim, processed)
    payload = orjson.dumps(processed.message)
    if fate.drop:
        return sim.faults.dropped(payload)
    return Response(payload, media_type="application/json")


async def count_tokens(request: Request, sim: Simulator) -> Response:
    """POST /v1/messages/count_tokens: the same count, free, no messages rate limit."""
    from batcher.simulator.app import read_json

    betas = betas_of(request)
    body = await read_json(request)
    if _is_heavy(request):
        checked = await anyio.to_thread.run_sync(lambda: check_body(body, sim, betas=betas, count=True))
    else:
        checked = check_body(body, sim, betas=betas, count=True)
    return Response(orjson.dumps({"input_tokens": checked.input_tokens}), media_type="application/json")
