"""Validation of a messages (or count_tokens) body, as strict as the API.

Every problem is an :class:`~batcher.simulator.errors.ApiError` whose message names the failing
path the way the API does (``messages.0.content.2.source.media_type: ...``); unknown files are a
404, everything else a 400. A body that passes comes back as a :class:`Checked`: the model's
profile, the prompt cut into counted :class:`Segment` s in the API's cache order (tools, the
structured-output format, system, messages) and every image with the size it was sent at and the
tokens it costs.

Rules the simulator adds where it cannot do what the API does (each documented where enforced):

- ``url`` image sources are never fetched. The image's size comes from ``w`` and ``h`` query
  parameters when both are positive integers (``https://x/cat.png?w=1200&h=800``), otherwise it is
  taken to be :data:`URL_DEFAULT_SIZE`; its media type comes from the path's extension (JPEG when
  there is none).
- ``stream: true`` is refused (the simulator does not stream), and so are block types and server
  tools batcher never sends (documents, search results, web search, ...), with a message saying
  the simulator does not support them rather than pretending to answer.
- Only the Claude API takes ``url`` and ``file`` sources; with ``platform`` bedrock or vertex an
  image must be base64, as there.
"""

from __future__ import annotations

import binascii
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlsplit

from batcher import facts
from batcher.models import ModelProfile
from batcher.simulator import schemas, tokens
from batcher.simulator.config import SimConfig
from batcher.simulator.errors import ApiError, invalid

URL_DEFAULT_SIZE: Final = (1024, 768)
#: The only values a model that refuses sampling parameters accepts (see ``_sampling``).
SAMPLING_DEFAULTS: Final = {"temperature": 1.0, "top_p": 1.0}

CREATE_FIELDS: Final = frozenset(
    {
        "model",
        "messages",
        "cache_control",
        "container",
        "inference_geo",
        "max_tokens",
        "metadata",
        "output_config",
        "service_tier",
        "stop_sequences",
        "stream",
        "system",
        "temperature",
        "thinking",
        "tool_choice",
        "tools",
        "top_k",
        "top_p",
    }
)
COUNT_FIELDS: Final = frozenset(
    {
        "cache_control",
        "messages",
        "model",
        "output_config",
        "system",
        "thinking",
        "tool_choice",
        "tools",
    }
)
_BLOCK_KEYS: Final = {
    "text": frozenset({"type", "text", "cache_control", "citations"}),
    "image": frozenset({"type", "source", "cache_control"}),
    "tool_use": frozenset({"type", "id", "name", "input", "cache_control", "caller"}),
    "tool_result": frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"}),
    "thinking": frozenset({"type", "thinking", "signature"}),
    "redacted_thinking": frozenset({"type", "data"}),
}
_ROLE_BLOCKS: Final = {
    "user": ("text", "image", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
}
#: Block types the API takes that batcher never sends: refused by name, not silently mis-answered.
_UNSUPPORTED_BLOCKS: Final = frozenset(
    {
        "document",
        "search_result",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "container_upload",
        "mid_conv_system",
        "tool_reference",
    }
)
_TOOL_KEYS: Final = frozenset(
    {
        "type",
        "description",
        "name",
        "input_schema",
        "cache_control",
        "strict",
        "eager_input_streaming",
        "allowed_callers",
        "defer_loading",
        "input_examples",
    }
)
_TOOL_NAME: Final = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_ID: Final = re.compile(r"^[a-zA-Z0-9_-]+$")
_PILLOW_FORMAT: Final = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}
_EXTENSION_TYPE: Final = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
_MIB: Final = 1024 * 1024


@dataclass(slots=True)
class ImageIn:
    """One image of a request, as sent; ``tokens`` and ``seen`` are filled in once counted."""

    path: str  # the block: messages.0.content.2
    data_path: str  # the field carrying the pixels: ...source.data / .url / .file_id
    source: str  # base64 | url | file
    media_type: str
    width: int
    height: int
    b64_bytes: int
    raw: bytes | None  # decoded bytes; None for a url the simulator does not fetch
    tokens: int = 0
    seen: tuple[int, int] = (0, 0)


@dataclass(slots=True)
class Segment:
    """One counted piece of the prompt; ``ttl`` set when a cache breakpoint ends here.

    ``block``: the piece ends a block, in the sense of the prompt cache's 20-block lookback (a
    tool, a system block, a message content block, or one inside a ``tool_result``); a message's
    role overhead, a ``tool_result``'s opening and the structured-output format are not blocks.
    """

    text: str = ""
    image: ImageIn | None = None
    overhead: int = 0
    key: str = ""  # identity for the prompt cache (the text, the image data, a url, a file id)
    ttl: str | None = None
    tokens: int = 0
    block: bool = True


@dataclass(slots=True)
class Checked:
    """A body that passed validation, counted."""

    profile: ModelProfile
    model: str  # as the request named it
    max_tokens: int
    segments: list[Segment]
    images: list[ImageIn]
    prompt_texts: list[str]
    stop_sequences: list[str] = field(default_factory=list)
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    forced_tool: str | None = None
    output_schema: dict[str, Any] | None = None
    input_tokens: int = 0
    image_tokens: int = 0

    @property
    def megapixels(self) -> float:
        """Megapixels of input as sent (what the latency model charges for)."""
        return sum(i.width * i.height for i in self.images) / 1e6


class ImageFiles(Protocol):
    """Where ``file`` image sources are read from (the simulator's Files store)."""

    def image_bytes(self, file_id: str) -> tuple[bytes, str] | None: ...


class Context(Protocol):
    """What validation reads of the simulator (:class:`batcher.simulator.core.Simulator` is one):
    its config (the platform), the Files store, the models it knows and the platform's image cap."""

    @property
    def config(self) -> SimConfig: ...

    @property
    def files(self) -> ImageFiles: ...

    @property
    def max_image_b64_bytes_cap(self) -> int | None: ...

    def model(self, name: object, path: str = "model") -> ModelProfile: ...


def check_body(
    body: object, sim: Context, *, betas: frozenset[str], path: str = "", count: bool = False
) -> Checked:
    """Validate and count one messages body (``count``: a count_tokens body, no ``max_tokens``)."""
    walk = _Walk(sim, betas, count)
    return walk.body(body, path)


# --- small type checks, with the API's (pydantic's) wording --------------------------------------


def _at(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _dict(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(path, "Input should be a valid dictionary")
    return value


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise invalid(path, "Input should be a valid list")
    return value


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise invalid(path, "Input should be a valid string")
    return value


def _int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(path, "Input should be a valid integer")
    return value


def _num(value: object, path: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(path, "Input should be a valid number")
    if not lo <= value <= hi:
        raise invalid(path, f"Input should be between {lo:g} and {hi:g}")
    return float(value)


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(path, "Input should be a valid boolean")
    return value


def _need(obj: dict[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        raise invalid(_at(path, key), "Field required")
    return obj[key]


def _no_extra(obj: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise invalid(_at(path, key), "Extra inputs are not permitted")


def _one_of(value: object, choices: Iterable[str], path: str) -> str:
    choices = tuple(choices)
    for choice in choices:
        if value == choice:
            return choice
    quoted = [f"'{c}'" for c in choices]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    raise invalid(path, f"Input should be {listed}")


def _tag(obj: dict[str, Any], tags: Iterable[str], path: str) -> str:
    """The ``type`` discriminator of a tagged union."""
    tags = tuple(tags)
    tag = _need(obj, "type", path)
    for known in tags:
        if tag == known:
            return known
    expected = ", ".join(f"'{t}'" for t in tags)
    raise invalid(
        _at(path, "type"),
        f"Input tag '{tag}' found using 'type' does not match any of the expected tags: {expected}",
    )


def _has_text(text: str) -> bool:
    return bool(text) and not text.isspace()


def _no_trailing_space(content: object, path: str) -> None:
    """A prefilled (final assistant) turn may not end in whitespace: the API refuses it."""
    tail = content
    if isinstance(content, list):
        last = content[-1] if content else None
        tail = last.get("text") if isinstance(last, dict) and last.get("type") == "text" else None
    if isinstance(tail, str) and tail != tail.rstrip():
        raise invalid(path, "final assistant content cannot end with trailing whitespace")


# --- the walk ------------------------------------------------------------------------------------


class _Walk:
    """One body's validation: collects segments and images as it goes."""

    def __init__(self, sim: Context, betas: frozenset[str], count: bool) -> None:
        self.sim = sim
        self.betas = betas
        self.count = count
        self.segments: list[Segment] = []
        self.images: list[ImageIn] = []
        self.texts: list[str] = []
        self.breakpoints = 0
        self.short_ttl_seen = False
        self.thinking_on = False
        self.profile: ModelProfile
        self.f100 = 100

    # top level

    def body(self, body: object, path: str) -> Checked:
        body = _dict(body, path or "body")
        _no_extra(body, COUNT_FIELDS if self.count else CREATE_FIELDS, path)
        self.profile = self.sim.model(body.get("model"), _at(path, "model"))
        self.f100 = tokens.factor_hundredths(self.profile)
        max_tokens = 0 if self.count else self._max_tokens(body, path)
        messages = _list(_need(body, "messages", path), _at(path, "messages"))
        if not messages:
            raise invalid(_at(path, "messages"), "at least one message is required")
        checked = Checked(self.profile, body["model"], max_tokens, self.segments, self.images, self.texts)
        self._options(body, path, checked)
        self._tools(body, path, checked)
        if checked.output_schema is not None:
            text = tokens.output_format_text(checked.output_schema)
            overhead = tokens.OUTPUT_FORMAT_OVERHEAD
            self.segments.append(Segment(text=text, overhead=overhead, key="format:" + text, block=False))
        if "system" in body:
            self._system(body["system"], _at(path, "system"))
        for i, message in enumerate(messages):
            self._message(message, _at(_at(path, "messages"), i), i, i == len(messages) - 1)
        self._top_cache_control(body, path)
        self._image_limits(_at(path, "messages"))
        self._tally(checked)
        return checked

    def _max_tokens(self, body: dict[str, Any], path: str) -> int:
        where = _at(path, "max_tokens")
        value = _int(_need(body, "max_tokens", path), where)
        if value < 0:
            raise invalid(where, "Input should be greater than or equal to 0")
        limit = self.profile.max_output_tokens
        if value > limit:
            raise invalid(
                where,
                f"{value} > {limit}, which is the maximum allowed number of "
                f"output tokens for {self.profile.id}",
            )
        return value

    def _options(self, body: dict[str, Any], path: str, checked: Checked) -> None:
        """Every top-level field other than model, max_tokens, messages, system and tools."""
        if body.get("stream") is not None and _bool(body["stream"], _at(path, "stream")):
            raise invalid(_at(path, "stream"), "streaming is not supported by the simulator")
        if "stop_sequences" in body:
            checked.stop_sequences = self._stop_sequences(body["stop_sequences"], _at(path, "stop_sequences"))
        if "metadata" in body:
            self._metadata(body["metadata"], _at(path, "metadata"))
        if "service_tier" in body:
            _one_of(body["service_tier"], ("auto", "standard_only"), _at(path, "service_tier"))
        for key in ("container", "inference_geo"):
            if body.get(key) is not None:
                _str(body[key], _at(path, key))
        self._sampling(body, path)
        if "thinking" in body:
            self._thinking(body["thinking"], _at(path, "thinking"), checked.max_tokens)
        if "output_config" in body:
            checked.output_schema = self._output_config(body["output_config"], _at(path, "output_config"))

    def _stop_sequences(self, value: object, path: str) -> list[str]:
        out = []
        for i, seq in enumerate(_list(value, path)):
            seq = _str(seq, _at(path, i))
            if not _has_text(seq):
                raise invalid(_at(path, i), "each stop sequence must contain non-whitespace")
            out.append(seq)
        return out

    def _metadata(self, value: object, path: str) -> None:
        meta = _dict(value, path)
        _no_extra(meta, frozenset({"user_id"}), path)
        user_id = meta.get("user_id")
        if user_id is not None and len(_str(user_id, _at(path, "user_id"))) > 512:
            raise invalid(_at(path, "user_id"), "String should have at most 512 characters")

    def _sampling(self, body: dict[str, Any], path: str) -> None:
        """Types and ranges; and the newest models' refusal of non-default values.

        On a model that refuses sampling parameters ("a non-default temperature, top_p or top_k
        is a 400"), only each one's default passes: ``temperature`` 1.0 (the documented default)
        and ``top_p`` 1.0 (no nucleus cut-off, what an omitted ``top_p`` means); ``top_k`` has no
        neutral value and is refused whatever it is. The OpenAPI document's deprecation note lets
        ``top_p >= 0.99`` through "for backwards compatibility"; the simulator does not, since it
        must never be more lenient than the API, and a client should omit these anyway.
        """
        refuse = not self.profile.sampling_params
        model = self.profile.id
        for key in ("temperature", "top_p"):
            if key in body:
                value = _num(body[key], _at(path, key), 0, 1)
                if refuse and value != SAMPLING_DEFAULTS[key]:
                    raise invalid(
                        _at(path, key),
                        f"{key} is not supported on {model} (only its "
                        f"default, {SAMPLING_DEFAULTS[key]:g}, is "
                        f"accepted); omit it",
                    )
        if not refuse and self.profile.sampling_one_of and "temperature" in body and "top_p" in body:
            raise invalid(
                "", "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
            )
        if "top_k" in body:
            value = _int(body["top_k"], _at(path, "top_k"))
            if value < 0:
                raise invalid(_at(path, "top_k"), "Input should be greater than or equal to 0")
            if refuse:
                raise invalid(_at(path, "top_k"), f"top_k is not supported on {model}; omit it")

    def _thinking(self, value: object, path: str, max_tokens: int) -> None:
        thinking = _dict(value, path)
        kind = _tag(thinking, ("enabled", "disabled", "adaptive"), path)
        allowed = {
            "enabled": {"type", "budget_tokens", "display"},
            "disabled": {"type"},
            "adaptive": {"type", "display"},
        }[kind]
        _no_extra(thinking, frozenset(allowed), path)
        if thinking.get("display") is not None:
            _one_of(thinking["display"], ("summarized", "omitted"), _at(path, "display"))
        if kind == "disabled":
            return
        if not self.profile.can("thinking"):
            raise invalid(path, f"thinking is not supported on {self.profile.id}")
        if kind == "enabled":
            # The models that refuse sampling parameters refuse manual extended thinking too.
            if not self.profile.sampling_params:
                raise invalid(
                    _at(path, "type"),
                    f"'enabled' thinking is not supported on {self.profile.id}; use 'adaptive'",
                )
            budget = _int(_need(thinking, "budget_tokens", path), _at(path, "budget_tokens"))
            if budget < 1024:
                raise invalid(_at(path, "budget_tokens"), "Input should be greater than or equal to 1024")
            if not self.count and budget >= max_tokens:
                raise invalid(
                    _at(path, "budget_tokens"), "`max_tokens` must be greater than `thinking.budget_tokens`"
                )
        self.thinking_on = True

    def _output_config(self, value: object, path: str) -> dict[str, Any] | None:
        config = _dict(value, path)
        _no_extra(config, frozenset({"effort", "format"}), path)
        if config.get("effort") is not None:
            _one_of(config["effort"], facts.EFFORT_LEVELS, _at(path, "effort"))
            if not self.profile.can("effort"):
                raise invalid(_at(path, "effort"), f"effort is not supported on {self.profile.id}")
        if config.get("format") is None:
            return None
        where = _at(path, "format")
        fmt = _dict(config["format"], where)
        _no_extra(fmt, frozenset({"type", "schema"}), where)
        _tag(fmt, ("json_schema",), where)
        schema = _dict(_need(fmt, "schema", where), _at(where, "schema"))
        if not self.profile.can("structured_outputs"):
            raise invalid(where, f"structured outputs are not supported on {self.profile.id}")
        problem = schemas.strict_problem(schema)
        if problem is not None:
            raise invalid(_at(where, "schema"), problem)
        return schema

    # tools

    def _tools(self, body: dict[str, Any], path: str, checked: Checked) -> None:
        if "tools" in body:
            where = _at(path, "tools")
            for i, tool in enumerate(_list(body["tools"], where)):
                tool = self._tool(tool, _at(where, i))
                if tool["name"] in checked.tools:
                    raise invalid(where, "Tool names must be unique.")
                checked.tools[tool["name"]] = tool
        if "tool_choice" in body:
            checked.forced_tool = self._tool_choice(
                body["tool_choice"], _at(path, "tool_choice"), checked.tools
            )

    def _tool(self, value: object, path: str) -> dict[str, Any]:
        tool = _dict(value, path)
        if tool.get("type") not in (None, "custom"):
            raise invalid(
                _at(path, "type"),
                f"tool type '{tool['type']}' is not supported by the simulator (custom tools only)",
            )
        _no_extra(tool, _TOOL_KEYS, path)
        name = _str(_need(tool, "name", path), _at(path, "name"))
        if not _TOOL_NAME.match(name):
            raise invalid(_at(path, "name"), "String should match pattern '^[a-zA-Z0-9_-]{1,128}$'")
        if "description" in tool:
            _str(tool["description"], _at(path, "description"))
        schema_path = _at(path, "input_schema")
        schema = _dict(_need(tool, "input_schema", path), schema_path)
        _one_of(_need(schema, "type", schema_path), ("object",), _at(schema_path, "type"))
        if schema.get("properties") is not None:
            _dict(schema["properties"], _at(schema_path, "properties"))
        if schema.get("required") is not None:
            for i, key in enumerate(_list(schema["required"], _at(schema_path, "required"))):
                _str(key, _at(_at(schema_path, "required"), i))
        # a strict tool's schema follows structured output's rules; a plain one need not
        if "strict" in tool and _bool(tool["strict"], _at(path, "strict")):
            problem = schemas.strict_problem(schema)
            if problem is not None:
                raise invalid(schema_path, problem)
        ttl = self._cache_control(tool, path)
        self.segments.append(
            Segment(
                text=tokens.tool_definition_text(tool),
                ttl=ttl,
                key="tool:" + tokens.tool_definition_text(tool),
            )
        )
        return tool

    def _tool_choice(self, value: object, path: str, tools: dict[str, dict[str, Any]]) -> str | None:
        choice = _dict(value, path)
        kind = _tag(choice, ("auto", "any", "tool", "none"), path)
        allowed = {
            "auto": {"type", "disable_parallel_tool_use"},
            "any": {"type", "disable_parallel_tool_use"},
            "tool": {"type", "name", "disable_parallel_tool_use"},
            "none": {"type"},
        }[kind]
        _no_extra(choice, frozenset(allowed), path)
        if "disable_parallel_tool_use" in choice:
            _bool(choice["disable_parallel_tool_use"], _at(path, "disable_parallel_tool_use"))
        if kind in ("auto", "none"):
            return None
        if not self.profile.forced_tool_use:
            raise invalid(
                _at(path, "type"),
                f"forced tool use (tool_choice '{kind}') is not "
                f"supported on {self.profile.id}; use "
                "output_config.format for structured output",
            )
        if self.thinking_on:
            raise invalid(path, "Thinking may not be enabled when tool_choice forces tool use.")
        if not tools:
            raise invalid(path, f"tool_choice '{kind}' needs at least one tool in `tools`")
        if kind == "any":
            return next(iter(tools))
        name = _str(_need(choice, "name", path), _at(path, "name"))
        if name not in tools:
            raise invalid(_at(path, "name"), f"tool '{name}' is not among the tools provided")
        return name

    # system and messages

    def _system(self, value: object, path: str) -> None:
        if isinstance(value, str):
            self.texts.append(value)
            self.segments.append(Segment(text=value, key="system:" + value))
            return
        for i, block in enumerate(_list(value, path)):
            block_path = _at(path, i)
            block = _dict(block, block_path)
            _tag(block, ("text",), block_path)
            self._text_block(block, block_path)

    def _message(self, value: object, path: str, index: int, last: bool) -> None:
        message = _dict(value, path)
        _no_extra(message, frozenset({"role", "content"}), path)
        role = _one_of(_need(message, "role", path), ("user", "assistant"), _at(path, "role"))
        if index == 0 and role != "user":
            raise invalid(_at(path, "role"), 'the first message must use the "user" role')
        content = _need(message, "content", path)
        self.segments.append(Segment(overhead=tokens.MESSAGE_OVERHEAD, key="\x00" + role, block=False))
        where = _at(path, "content")
        if isinstance(content, str):
            if not _has_text(content) and not (last and role == "assistant" and not content):
                raise invalid(where, "text content blocks must contain non-whitespace text")
            self.texts.append(content)
            self.segments.append(Segment(text=content, key=content))
        else:
            blocks = _list(content, where)
            if not blocks and not (last and role == "assistant"):
                raise invalid(
                    path,
                    "all messages must have non-empty content except for the "
                    "optional final assistant message",
                )
            for i, block in enumerate(blocks):
                self._block(block, _at(where, i), role)
        if last and role == "assistant":
            _no_trailing_space(content, path)

    def _block(self, value: object, path: str, role: str) -> None:
        block = _dict(value, path)
        kind = block.get("type")
        if kind in _UNSUPPORTED_BLOCKS:
            raise invalid(_at(path, "type"), f"'{kind}' blocks are not supported by the simulator")
        allowed = _ROLE_BLOCKS[role]
        if kind in _BLOCK_KEYS and kind not in allowed:
            raise invalid(_at(path, "type"), f"'{kind}' blocks are not allowed in {role} messages")
        kind = _tag(block, allowed, path)
        _no_extra(block, _BLOCK_KEYS[kind], path)
        if kind == "text":
            self._text_block(block, path)
        elif kind == "image":
            self._image_block(block, path)
        elif kind == "tool_use":
            self._tool_use_block(block, path)
        elif kind == "tool_result":
            self._tool_result_block(block, path)
        elif kind == "thinking":
            text = _str(_need(block, "thinking", path), _at(path, "thinking"))
            _str(_need(block, "signature", path), _at(path, "signature"))
            self.segments.append(Segment(text=text, key="thinking:" + text))
        else:
            data = _str(_need(block, "data", path), _at(path, "data"))
            self.segments.append(Segment(text=data, key="redacted:" + data))

    def _text_block(self, block: dict[str, Any], path: str) -> None:
        _no_extra(block, _BLOCK_KEYS["text"], path)
        text = _str(_need(block, "text", path), _at(path, "text"))
        if not text:
            raise invalid(_at(path, "text"), "text content blocks must be non-empty")
        if text.isspace():
            raise invalid(_at(path, "text"), "text content blocks must contain non-whitespace text")
        if block.get("citations") is not None:
            _list(block["citations"], _at(path, "citations"))
        self.texts.append(text)
        self.segments.append(Segment(text=text, key=text, ttl=self._cache_control(block, path)))

    def _tool_use_block(self, block: dict[str, Any], path: str) -> None:
        tool_id = _str(_need(block, "id", path), _at(path, "id"))
        if not _ID.match(tool_id):
            raise invalid(_at(path, "id"), "String should match pattern '^[a-zA-Z0-9_-]+$'")
        name = _str(_need(block, "name", path), _at(path, "name"))
        if not 1 <= len(name) <= 200:
            raise invalid(_at(path, "name"), "String should have between 1 and 200 characters")
        tool_input = _dict(_need(block, "input", path), _at(path, "input"))
        text = tokens.tool_use_text(name, tool_input)
        self.segments.append(Segment(text=text, key="tool_use:" + text, ttl=self._cache_control(block, path)))

    def _tool_result_block(self, block: dict[str, Any], path: str) -> None:
        tool_use_id = _str(_need(block, "tool_use_id", path), _at(path, "tool_use_id"))
        if not _ID.match(tool_use_id):
            raise invalid(_at(path, "tool_use_id"), "String should match pattern '^[a-zA-Z0-9_-]+$'")
        if "is_error" in block:
            _bool(block["is_error"], _at(path, "is_error"))
        self.segments.append(Segment(key="tool_result:" + tool_use_id, block=False))
        content = block.get("content")
        where = _at(path, "content")
        if isinstance(content, str):
            self.texts.append(content)
            self.segments.append(Segment(text=content, key=content))
        elif content is not None:
            for i, inner in enumerate(_list(content, where)):
                inner_path = _at(where, i)
                inner = _dict(inner, inner_path)
                if inner.get("type") in _UNSUPPORTED_BLOCKS | {"document"}:
                    raise invalid(
                        _at(inner_path, "type"),
                        f"'{inner['type']}' blocks are not supported by the simulator",
                    )
                kind = _tag(inner, ("text", "image"), inner_path)
                if kind == "text":
                    self._text_block(inner, inner_path)
                else:
                    _no_extra(inner, _BLOCK_KEYS["image"], inner_path)
                    self._image_block(inner, inner_path)
        self.segments[-1].block = True  # the tool_result ends with its last piece
        self.segments[-1].ttl = self._cache_control(block, path) or self.segments[-1].ttl

    def _cache_control(self, block: dict[str, Any], path: str) -> str | None:
        """The TTL of a block's ``cache_control`` breakpoint, or None where it has none."""
        value = block.get("cache_control")
        if value is None:
            return None
        where = _at(path, "cache_control")
        control = _dict(value, where)
        _no_extra(control, frozenset({"type", "ttl"}), where)
        _tag(control, ("ephemeral",), where)
        ttl = _one_of(control.get("ttl", "5m"), tuple(facts.CACHE_TTL_S), _at(where, "ttl"))
        self.breakpoints += 1
        if self.breakpoints > facts.MAX_CACHE_BREAKPOINTS:
            raise invalid(
                where,
                f"A maximum of {facts.MAX_CACHE_BREAKPOINTS} blocks with "
                f"cache_control may be provided. Found {self.breakpoints}.",
            )
        # TTLs may only shorten along the prompt: a 1h breakpoint after a 5m one is a 400
        if ttl == "1h" and self.short_ttl_seen:
            raise invalid(
                _at(where, "ttl"),
                "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block. "
                "Note that blocks are processed in the following order: `tools`, `system`, `messages`.",
            )
        self.short_ttl_seen = self.short_ttl_seen or ttl == "5m"
        return ttl

    def _top_cache_control(self, body: dict[str, Any], path: str) -> None:
        """Top-level ``cache_control`` marks the last cacheable block (the prompt's end; thinking
        blocks cannot carry a breakpoint). It is one of the 4 breakpoints, processed last."""
        ttl = self._cache_control(body, path)
        if ttl is None:
            return
        for seg in reversed(self.segments):
            if seg.block and not seg.key.startswith(("thinking:", "redacted:")):
                seg.ttl = ttl
                return

    # images

    def _image_block(self, block: dict[str, Any], path: str) -> None:
        where = _at(path, "source")
        source = _dict(_need(block, "source", path), where)
        kind = _tag(source, ("base64", "url", "file"), where)
        if kind != "base64":
            if self.count:
                raise invalid(_at(where, "type"), "count_tokens accepts only base64 image sources")
            if self.sim.config.platform != "anthropic":
                raise invalid(
                    _at(where, "type"),
                    f"only base64 image sources are supported on {self.sim.config.platform}",
                )
        if kind == "base64":
            image = self._base64_source(source, path, where)
        elif kind == "url":
            image = self._url_source(source, path, where)
        else:
            image = self._file_source(source, path, where)
        if max(image.width, image.height) > facts.MAX_IMAGE_EDGE:
            raise invalid(
                image.data_path,
                "At least one of the image dimensions exceed max "
                f"allowed size: {facts.MAX_IMAGE_EDGE} pixels",
            )
        self.images.append(image)
        key = source.get("data") or source.get("url") or source.get("file_id")
        self.segments.append(
            Segment(
                image=image,
                overhead=tokens.IMAGE_BLOCK_OVERHEAD,
                key="image:" + str(key),
                ttl=self._cache_control(block, path),
            )
        )

    def _b64_limit(self) -> int:
        cap = self.sim.max_image_b64_bytes_cap
        limit = self.profile.max_image_b64_bytes
        return limit if cap is None else min(limit, cap)

    def _check_b64_size(self, n: int, path: str) -> None:
        limit = self._b64_limit()
        if n > limit:
            raise invalid(path, f"image exceeds {limit / _MIB:g} MB maximum: {n} bytes > {limit} bytes")

    def _base64_source(self, source: dict[str, Any], path: str, where: str) -> ImageIn:
        _no_extra(source, frozenset({"type", "media_type", "data"}), where)
        media_type = _one_of(_need(source, "media_type", where), facts.MEDIA_TYPES, _at(where, "media_type"))
        data_path = _at(where, "data")
        data = _str(_need(source, "data", where), data_path)
        self._check_b64_size(len(data), data_path)
        try:
            raw = binascii.a2b_base64(data.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            raise invalid(data_path, "Invalid base64 data") from None
        self._check_media_type(raw, media_type, _at(where, "media_type"))
        width, height = _pixel_size(raw, media_type, data_path)
        return ImageIn(path, data_path, "base64", media_type, width, height, len(data), raw)

    def _url_source(self, source: dict[str, Any], path: str, where: str) -> ImageIn:
        _no_extra(source, frozenset({"type", "url"}), where)
        url_path = _at(where, "url")
        url = _str(_need(source, "url", where), url_path)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise invalid(url_path, "Input should be a valid URL (http or https)")
        width, height = _url_size(parts.query)
        suffix = parts.path[parts.path.rfind(".") :].lower() if "." in parts.path else ""
        media_type = _EXTENSION_TYPE.get(suffix, "image/jpeg")
        return ImageIn(path, url_path, "url", media_type, width, height, 0, None)

    def _file_source(self, source: dict[str, Any], path: str, where: str) -> ImageIn:
        # With or without `anthropic-beta: files-api-...`: the current SDK sends none (issue 13).
        _no_extra(source, frozenset({"type", "file_id"}), where)
        id_path = _at(where, "file_id")
        file_id = _str(_need(source, "file_id", where), id_path)
        stored = self.sim.files.image_bytes(file_id)
        if stored is None:
            raise ApiError(404, f"{id_path}: File not found: {file_id}")
        raw, mime = stored
        if mime not in facts.MEDIA_TYPES:
            raise invalid(
                id_path,
                f"file {file_id} has type {mime}, which is not an image type "
                f"the API accepts ({', '.join(facts.MEDIA_TYPES)})",
            )
        self._check_b64_size(facts.b64_len(len(raw)), id_path)
        self._check_media_type(raw, mime, id_path)
        width, height = _pixel_size(raw, mime, id_path)
        return ImageIn(path, id_path, "file", mime, width, height, facts.b64_len(len(raw)), raw)

    @staticmethod
    def _check_media_type(raw: bytes, declared: str, path: str) -> None:
        actual = facts.sniff_media_type(raw[:16])
        if actual is None:
            raise invalid(
                path,
                f"Image does not match the provided media type {declared}: the "
                "data is not a JPEG, PNG, GIF or WebP image",
            )
        if actual != declared:
            raise invalid(
                path, f"Image does not match the provided media type {declared}: the data is {actual}"
            )

    def _image_limits(self, path: str) -> None:
        """Per-request image rules, known only once every image is read."""
        n = len(self.images)
        if n > self.profile.images_per_request:
            raise invalid(
                path,
                f"too many images in this request: {n} > "
                f"{self.profile.images_per_request}, the maximum for "
                f"{self.profile.id}",
            )
        if n > facts.MANY_IMAGES_THRESHOLD:
            for image in self.images:
                if max(image.width, image.height) > facts.MANY_IMAGES_EDGE:
                    raise invalid(
                        image.data_path,
                        "At least one of the image dimensions exceed "
                        "max allowed size for many-image requests: "
                        f"{facts.MANY_IMAGES_EDGE} pixels",
                    )

    def _tally(self, checked: Checked) -> None:
        """Token counts for every segment, the request, its images; the context-window rule."""
        total = image_total = 0
        for seg in self.segments:
            seg.tokens = seg.overhead + (tokens.text_tokens(seg.text, self.f100) if seg.text else 0)
            if seg.image is not None:
                image = seg.image
                image.tokens, image.seen = tokens.image_tokens(self.profile, image.width, image.height)
                seg.tokens += image.tokens
                image_total += image.tokens
            total += seg.tokens
        if total > self.profile.context_window:
            raise invalid("", f"prompt is too long: {total} tokens > {self.profile.context_window} maximum")
        checked.input_tokens = total
        checked.image_tokens = image_total


def _url_size(query: str) -> tuple[int, int]:
    """The size a url image is taken to have: ``w``/``h`` query parameters, else the default."""
    params = parse_qs(query)
    try:
        width, height = int(params["w"][0]), int(params["h"][0])
    except (KeyError, ValueError):
        return URL_DEFAULT_SIZE
    return (width, height) if width > 0 and height > 0 else URL_DEFAULT_SIZE


def _pixel_size(raw: bytes, media_type: str, path: str) -> tuple[int, int]:
    """The image's real size, read from its header only (Pillow opens lazily)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw), formats=[_PILLOW_FORMAT[media_type]]) as image:
            return image.size
    except Image.DecompressionBombError:
        raise invalid(
            path,
            f"At least one of the image dimensions exceed max allowed size: {facts.MAX_IMAGE_EDGE} pixels",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise invalid(path, "Could not process image") from None
