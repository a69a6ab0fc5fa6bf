"""What every route shares on the wire: ids, times, JSON bodies, beta headers and list paging.

The bottom of the simulator's HTTP side: it imports nothing of the simulator but its errors, so
the stores, the route handlers and the app can all use it without importing one another.
"""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from batcher import facts
from batcher.simulator.errors import ApiError, invalid

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """An id in the API's style (``msg_01...``), unique within the process."""
    return f"{prefix}_01{secrets.token_hex(8)}{next(_ids):06d}"


def rfc3339(moment: dt.datetime) -> str:
    """An aware UTC time as the API writes it (``2025-04-15T18:37:24.100435Z``)."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def read_json(request: Request) -> object:
    """The request body as JSON, or the API's 400 for a body that is not."""
    body = await request.body()
    if len(body) > facts.MAX_REQUEST_BODY_BYTES:
        raise ApiError(413, "Request exceeds the maximum allowed number of bytes.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}") from None


def parse_betas(values: Iterable[str]) -> frozenset[str]:
    """The betas named by ``anthropic-beta`` header values (comma lists); 400 for unknown ones."""
    betas = frozenset(b.strip() for v in values for b in v.split(",") if b.strip())
    unknown = sorted(betas - facts.KNOWN_BETAS)
    if unknown:
        shown = ", ".join(f"`{u}`" for u in unknown)
        raise ApiError(
            400,
            f"anthropic-beta: Unexpected value(s) {shown} for the `anthropic-beta` "
            "header. Please consult our documentation at docs.claude.com or try "
            "again without the header.",
        )
    return betas


def betas_of(request: Request) -> frozenset[str]:
    """The request's ``anthropic-beta`` values (comma lists, header given once or more); 400 for
    a value the API does not know."""
    return parse_betas(request.headers.getlist("anthropic-beta"))


# --- paging, shared by the Files and Message Batches lists -----------------------------------------


def parse_limit(raw: str | None) -> int:
    """The ``limit`` query parameter of a list: 1..1000, default 20."""
    if raw is None:
        return 20
    try:
        limit = int(raw)
    except ValueError:
        raise invalid("limit", "Input should be a valid integer") from None
    if not 1 <= limit <= 1000:
        raise invalid("limit", "Input should be between 1 and 1000")
    return limit


def page(
    entries: Sequence[tuple[int, dict[str, Any]]], limit: int, after: int | None, before: int | None
) -> dict[str, Any]:
    """One page of ``entries`` — (sequence number, object) pairs, newest (highest) first.

    ``after`` and ``before`` are the sequence numbers of the cursors: ``after`` pages towards
    older objects, ``before`` towards newer ones (the page just before the cursor).
    """
    if after is not None:
        rest = [e for e in entries if e[0] < after]
        chosen, has_more = rest[:limit], len(rest) > limit
    elif before is not None:
        rest = [e for e in entries if e[0] > before]
        chosen, has_more = rest[-limit:], len(rest) > limit
    else:
        chosen, has_more = list(entries[:limit]), len(entries) > limit
    data = [obj for _, obj in chosen]
    return {
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def cursors(request: Request, seq_of: Callable[[str], int | None]) -> tuple[int, int | None, int | None]:
    """``limit`` and the two cursors of a list request, as sequence numbers; 400 for bad ones."""
    query = request.query_params
    limit = parse_limit(query.get("limit"))
    after_id, before_id = query.get("after_id"), query.get("before_id")
    if after_id is not None and before_id is not None:
        raise invalid("", "after_id and before_id cannot both be given")
    return limit, _seq(after_id, "after_id", seq_of), _seq(before_id, "before_id", seq_of)


def _seq(cursor: str | None, name: str, seq_of: Callable[[str], int | None]) -> int | None:
    if cursor is None:
        return None
    seq = seq_of(cursor)
    if seq is None:
        raise invalid(name, f"no object with id {cursor!r} in this list")
    return seq
