"""The simulator's answers: deterministic text a test can check, and the usage it costs.

An answer describes every image the request held, in order (the size it was sent at, its media
type and source, its mean colour as RGB hex, alpha ignored; a ``url`` image is not fetched, so it
has no colour), then echoes every ``nonce=...`` token found in the prompt text (system, text
blocks, tool results), each once, in order of first appearance::

    Received 2 images. Image 1: 1000x1000 image/png (base64), mean colour #7f7f7f.
    Image 2: 1024x768 image/jpeg (url), not fetched. nonce=row-17

The text is then cut to ``max_tokens`` (stop_reason ``max_tokens``) or at the first stop sequence
(``stop_sequence``); otherwise the answer ends its turn. A forced ``tool_choice`` answers with one
``tool_use`` block whose ``input`` fits the tool's ``input_schema`` (:func:`instance`), and
``output_config.format`` with one text block of compact JSON that fits its schema (cut like any
text, so a tight ``max_tokens`` leaves unparseable JSON and stop_reason ``max_tokens``); free
strings in either, nested and in arrays too, carry the description above, so a test can still see
which row an answer belongs to. Enums and consts take their first value, formats a valid example.
The constraints the official SDK moves into a description (``"...\n\n{minimum: 1, maxLength: 20}"``)
are followed, as a model reading its description would.

Answer faults (:mod:`batcher.simulator.faults`, drawn by the caller and passed to :func:`answer`):
``refusal`` answers ``stop_reason`` "refusal" with ``stop_details`` ``{"type": "refusal",
"category": null, "explanation": null}`` and one short text block (:data:`REFUSAL_TEXT`, billed as
output), whatever was asked; ``mismatch`` answers a structured request with JSON that keeps types,
required properties, enums, consts and formats but ignores every other constraint: integers -1,
numbers -1.5, free strings "" (``instance(..., broken=True)``).

Prompt caching (:class:`PromptCache`): a ``cache_control`` breakpoint whose prefix holds at least
the model's ``min_cacheable_tokens`` is written the first time and read while the same prefix
(same model, same content up to the breakpoint) is within its TTL; a read refreshes the TTL.
Cache reads do not count toward the input-tokens-per-minute limit (writes do), as on current models:
:meth:`PromptCache.peek` tells the live endpoint what a prompt would read before it is admitted.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from batcher import facts
from batcher.simulator import tokens
from batcher.simulator.ledger import ImageSeen
from batcher.simulator.validate import Checked, ImageIn
from batcher.simulator.wire import new_id

NONCE: Final = re.compile(r"nonce=([A-Za-z0-9_.:-]+)")
#: Past this depth a generated instance fills in required properties only (recursive schemas).
_FULL_DEPTH: Final = 4
_MAX_DEPTH: Final = 32


@dataclass
class Processed:
    """One answered messages body: the response and what it costs."""

    message: dict[str, Any]
    input_tokens: int  # every prompt token, cached or not
    output_tokens: int
    image_tokens: int
    nonces: list[str]
    images: list[ImageSeen] = field(default_factory=list)


def answer(checked: Checked, cache: PromptCache, fault: str | None = None) -> Processed:
    """Answer a validated body (no rate limit, error fault or latency: the caller's business),
    reading and writing the simulator's prompt ``cache``; ``fault`` is the answer fault drawn for
    it (``"refusal"``, ``"mismatch"``; see :mod:`batcher.simulator.faults`), or None."""
    read, write_5m, write_1h = cache.use(checked)
    nonces = find_nonces(checked.prompt_texts)
    described = describe(checked.images, nonces)
    stop_details: dict[str, Any] | None = None
    if fault == "refusal":
        content, stop_reason, stop_sequence, output_tokens = _refusal(checked)
        stop_details = {"type": "refusal", "category": None, "explanation": None}
    else:
        content, stop_reason, stop_sequence, output_tokens = _content(
            checked, described, broken=fault == "mismatch"
        )
    usage = {
        "input_tokens": checked.input_tokens - read - write_5m - write_1h,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": write_5m + write_1h,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h},
        "inference_geo": None,
        "output_tokens_details": {"thinking_tokens": 0},
        "server_tool_use": None,
        "service_tier": "standard",
    }
    message = {
        "id": new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": checked.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "stop_details": stop_details,
        "usage": usage,
        "container": None,
    }
    return Processed(
        message,
        checked.input_tokens,
        output_tokens,
        checked.image_tokens,
        nonces,
        [seen_of(image) for image in checked.images],
    )


def seen_of(image: ImageIn) -> ImageSeen:
    """The ledger's record of an image (``resized_to`` only when the model had to resize it)."""
    resized = image.seen if image.seen != (image.width, image.height) else None
    return ImageSeen(
        image.width, image.height, image.media_type, image.source, image.b64_bytes, resized, image.tokens
    )


def find_nonces(texts: list[str]) -> list[str]:
    """Every ``nonce=`` value in the prompt, once each, in order of first appearance."""
    return list(dict.fromkeys(m for text in texts if "nonce=" in text for m in NONCE.findall(text)))


def describe(images: list[ImageIn], nonces: list[str]) -> str:
    """The answer's text (see the module docstring)."""
    n = len(images)
    parts = [f"Received {n} image{'' if n == 1 else 's'}." if n else "Received no images."]
    for k, image in enumerate(images, 1):
        head = f"Image {k}: {image.width}x{image.height} {image.media_type} ({image.source})"
        if image.raw is None:
            parts.append(f"{head}, not fetched.")
        else:
            parts.append(f"{head}, mean colour {mean_colour(image.raw)}.")
    parts.extend(f"nonce={nonce}" for nonce in nonces)
    return " ".join(parts)


def mean_colour(raw: bytes) -> str:
    """The image's mean colour as ``#rrggbb`` (first frame, alpha ignored).

    JPEGs are decoded at 1/8 scale (``draft``), which costs a fraction of a full decode and moves
    the mean by a unit or two at most; other formats are decoded in full.
    """
    from PIL import Image, ImageStat

    with Image.open(io.BytesIO(raw)) as image:
        if image.format == "JPEG":
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        rgba = image.convert("RGBA")
    red, green, blue = (round(v) for v in ImageStat.Stat(rgba).mean[:3])
    return f"#{red:02x}{green:02x}{blue:02x}"


# --- content -------------------------------------------------------------------------------------


#: What a refusal says (the API's wording varies; a client must go by ``stop_reason``).
REFUSAL_TEXT: Final = "I can't help with that request."


def _refusal(checked: Checked) -> tuple[list[dict[str, Any]], str, str | None, int]:
    """A refusal: a short text (no JSON, whatever was asked), cut to ``max_tokens`` if need be."""
    f100 = tokens.factor_hundredths(checked.profile)
    if checked.max_tokens == 0:
        return [], "max_tokens", None, 0
    text = REFUSAL_TEXT
    if tokens.text_tokens(text, f100) > checked.max_tokens:
        text = tokens.cut_to_tokens(text, checked.max_tokens, f100)
    return (
        [{"type": "text", "text": text, "citations": None}],
        "refusal",
        None,
        tokens.text_tokens(text, f100),
    )


def _content(
    checked: Checked, described: str, *, broken: bool = False
) -> tuple[list[dict[str, Any]], str, str | None, int]:
    """(content blocks, stop_reason, stop_sequence, output tokens); ``broken``: a mismatch."""
    f100 = tokens.factor_hundredths(checked.profile)
    if checked.max_tokens == 0:
        return [], "max_tokens", None, 0
    if checked.forced_tool is not None:
        tool = checked.tools[checked.forced_tool]
        tool_input = instance(tool["input_schema"], described, broken=broken)
        used = tokens.text_tokens(tokens.tool_use_text(tool["name"], tool_input), f100)
        if used > checked.max_tokens:
            return [], "max_tokens", None, checked.max_tokens
        block = {
            "type": "tool_use",
            "id": new_id("toolu"),
            "name": tool["name"],
            "input": tool_input,
            "caller": {"type": "direct"},
        }
        return [block], "tool_use", None, used
    if checked.output_schema is not None:
        text = orjson.dumps(instance(checked.output_schema, described, broken=broken)).decode()
    else:
        text = described
    text, stop_reason, stop_sequence = _cut(text, checked.stop_sequences, checked.max_tokens, f100)
    # a cut answer used its whole budget (the token the cut fell inside was generated too)
    used = checked.max_tokens if stop_reason == "max_tokens" else tokens.text_tokens(text, f100)
    return [{"type": "text", "text": text, "citations": None}], stop_reason, stop_sequence, used


def _cut(text: str, stop_sequences: list[str], max_tokens: int, f100: int) -> tuple[str, str, str | None]:
    """The text as generated up to whichever comes first: a stop sequence or ``max_tokens``."""
    hits = [(text.find(s), s) for s in stop_sequences if s in text]
    stop_at, stop_seq = min(hits) if hits else (len(text), None)
    kept = text[:stop_at]
    if tokens.text_tokens(kept, f100) > max_tokens:
        return tokens.cut_to_tokens(kept, max_tokens, f100), "max_tokens", None
    if stop_seq is not None:
        return kept, "stop_sequence", stop_seq
    return kept, "end_turn", None


# --- instances of a JSON schema ------------------------------------------------------------------

_FORMATS: Final = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "email": "row@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
}
_PATTERN_TRIES: Final = ("", "a", "A", "0", "a0", "A0", "aa", "00", "a-0", "x_0")


def instance(schema: Any, filler: str, root: Any = None, depth: int = 0, *, broken: bool = False) -> Any:
    """A value that fits ``schema`` (the JSON Schema subset tools and formats use).

    Handles ``$ref`` within the schema, ``const``/``enum`` (first value), ``anyOf``/``oneOf``
    (first non-null branch), ``allOf`` (merged), types (a list picks its first non-null type),
    string length, format and pattern, numeric bounds and ``multipleOf``, array bounds and
    ``prefixItems``, and objects (every property near the top, required ones deeper down). Free
    strings carry ``filler``.

    ``broken`` (the ``mismatch`` fault): what a decoder that enforces only the strict schema lets
    through when the model ignores the rest: types, required properties, ``enum``/``const`` and
    formats still hold, but integers are -1, numbers -1.5 and free strings "" whatever their
    bounds, lengths or patterns say.
    """
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return ("" if broken else filler) if schema is not False else None
    if "$ref" in schema:
        return instance(_resolve(root, schema["$ref"]), filler, root, depth + 1, broken=broken)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            branches = schema[key]
            pick = next(
                (b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")), branches[0]
            )
            return instance(pick, filler, root, depth + 1, broken=broken)
    if schema.get("allOf"):
        return instance(_merged(schema, root), filler, root, depth + 1, broken=broken)
    kind = _type_of(schema)
    if not broken:
        schema = _hinted(schema)
    if broken and kind in _BROKEN:
        return _BROKEN[kind](schema)
    if broken and kind in ("array", "object"):
        return (_array if kind == "array" else _object)(schema, filler, root, depth, broken=True)
    return _BY_TYPE[kind](schema, filler, root, depth)


#: Constraints the official SDK moves into a description as ``{minimum: 1, maxLength: 20}``.
_HINTS: Final = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minItems",
    "maxItems",
)
_HINT_TAIL: Final = re.compile(r"(?:^|\n\n)\{((?:" + "|".join(_HINTS) + r"): .*)\}\Z", re.DOTALL)
_HINT_SPLIT: Final = re.compile(r", (?=(?:" + "|".join(_HINTS) + r"|[A-Za-z_]+): )")


def _hinted(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with the constraints an SDK-style description hint states (the model reads its
    description): the hint's tail ``{minimum: 1, maxLength: 20}``, for keys the schema lacks."""
    description = schema.get("description")
    if not isinstance(description, str) or not description.endswith("}"):
        return schema
    match = _HINT_TAIL.search(description)
    if match is None:
        return schema
    extra: dict[str, Any] = {}
    for item in _HINT_SPLIT.split(match.group(1)):
        key, _, text = item.partition(": ")
        if key in _HINTS and key not in schema:
            extra[key] = text if key in ("pattern", "format") else _hint_number(text)
    extra = {k: v for k, v in extra.items() if v is not None}
    return {**schema, **extra} if extra else schema


def _hint_number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind in _BY_TYPE:
        return str(kind)
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _resolve(root: Any, ref: str) -> Any:
    """A local ``#/...`` reference inside the root schema (others resolve to anything)."""
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node.get(part, {})
    return node


def _merged(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        if isinstance(part, dict) and "$ref" in part:
            part = _resolve(root, part["$ref"])
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties":
                out["properties"] = {**out.get("properties", {}), **value}
            elif key == "required":
                out["required"] = [*out.get("required", []), *value]
            else:
                out.setdefault(key, value)
    return out


def _string(schema: dict[str, Any], filler: str, root: Any, depth: int) -> str:
    value = _FORMATS.get(schema.get("format", ""), filler)
    pattern = schema.get("pattern")
    if pattern and not re.search(pattern, value):
        value = next((t for t in _PATTERN_TRIES if re.search(pattern, t)), value)
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if len(value) < low:
        value += "x" * (low - len(value))
    if high is not None and len(value) > high:
        value = value[:high]
    return value


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    low, high = schema.get("minimum"), schema.get("maximum")
    xlow, xhigh = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    step = 1 if integer else 0.5
    if xlow is not None:
        low = max(low, xlow + step) if low is not None else xlow + step
    if xhigh is not None:
        high = min(high, xhigh - step) if high is not None else xhigh - step
    value: float = 0
    if low is not None:
        value = max(value, low)
    if high is not None:
        value = min(value, high)
    if (xlow is not None and value <= xlow) or (xhigh is not None and value >= xhigh):
        value = (xlow + xhigh) / 2 if xlow is not None and xhigh is not None else value
    multiple = schema.get("multipleOf")
    if multiple:
        value = math.ceil(value / multiple) * multiple
    return math.ceil(value) if integer else value


def _array(schema: dict[str, Any], filler: str, root: Any, depth: int, *, broken: bool = False) -> list[Any]:
    prefix = schema.get("prefixItems") or []
    low = schema.get("minItems", 0)
    high = schema.get("maxItems")
    count = max(low, len(prefix), 1 if depth < _FULL_DEPTH else 0)
    if high is not None:
        count = min(count, high)
    items = schema.get("items", {})
    out = []
    for i in range(count):
        sub = prefix[i] if i < len(prefix) else items
        # numbered fillers keep uniqueItems arrays of strings unique
        out.append(instance(sub, f"{filler} #{i + 1}" if i else filler, root, depth + 1, broken=broken))
    return out


def _object(
    schema: dict[str, Any], filler: str, root: Any, depth: int, *, broken: bool = False
) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    required = list(schema.get("required") or [])
    names = list(properties) if depth < _FULL_DEPTH else []
    out: dict[str, Any] = {}
    for name in dict.fromkeys([*names, *required]):
        sub = properties.get(name, schema.get("additionalProperties", {}))
        out[name] = instance(sub if isinstance(sub, dict) else {}, filler, root, depth + 1, broken=broken)
    return out


_BY_TYPE: Final[dict[str, Callable[[dict[str, Any], str, Any, int], Any]]] = {
    "string": _string,
    "integer": lambda s, f, r, d: _number(s, True),
    "number": lambda s, f, r, d: _number(s, False),
    "boolean": lambda s, f, r, d: True,
    "null": lambda s, f, r, d: None,
    "array": _array,
    "object": _object,
}


#: A mismatch's scalars: a supported format's value stays (the decoder enforces formats).
_BROKEN: Final[dict[str, Callable[[dict[str, Any]], Any]]] = {
    "string": lambda s: _FORMATS.get(s.get("format", ""), ""),
    "integer": lambda s: -1,
    "number": lambda s: -1.5,
}


# --- prompt cache --------------------------------------------------------------------------------


class PromptCache:
    """Cached prompt prefixes: key -> monotonic expiry time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.entries: dict[bytes, float] = {}

    def peek(self, checked: Checked) -> int:
        """Tokens of this prompt that :meth:`use` would read from the cache now; changes nothing
        (a request refused by the rate limits neither writes nor refreshes an entry)."""
        points = _breakpoints(checked)
        if not points:
            return 0
        now = self.clock()
        return max((cum for key, cum, _ in points if self.entries.get(key, 0.0) > now), default=0)

    def use(self, checked: Checked) -> tuple[int, int, int]:
        """(read, written for 5 minutes, written for 1 hour) tokens of this prompt."""
        points = _breakpoints(checked)
        if not points:
            return 0, 0, 0
        now = self.clock()
        read = max((cum for key, cum, _ in points if self.entries.get(key, 0.0) > now), default=0)
        written = {"5m": 0, "1h": 0}
        prev = read
        for key, cum, ttl in points:
            if cum > prev:
                written[ttl] += cum - prev
                prev = cum
            # a write starts the TTL; a read refreshes it
            self.entries[key] = now + facts.CACHE_TTL_S[ttl]
        return read, written["5m"], written["1h"]


def _breakpoints(checked: Checked) -> list[tuple[bytes, int, str]]:
    """(prefix key, prefix tokens, ttl) at every breakpoint whose prefix is long enough to cache."""
    if not any(seg.ttl for seg in checked.segments):
        return []
    digest = hashlib.blake2b(checked.profile.id.encode(), digest_size=16)
    out = []
    cum = 0
    for seg in checked.segments:
        digest.update(seg.key.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1f")
        cum += seg.tokens
        if seg.ttl and cum >= (checked.profile.min_cacheable_tokens or 1024):
            out.append((digest.copy().digest(), cum, seg.ttl))
    return out
