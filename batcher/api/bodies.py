"""Request bodies: the one place that knows how a row becomes a Messages API request.

Images come before the prompt, and with several images each is introduced by ``Image N:``, as
the vision guide advises. Parameters the model refuses are never sent (config has already refused
a job that sets them for such a model).

Structured output (a job with ``[output]``) goes on the wire in one of two shapes
(:class:`StructuredRequest`): ``"format"`` sets ``output_config.format`` to the schema as prepared
for the API (``OutputSpec.wire_schema``), beside ``effort`` when the job sets it, with no beta
header; ``"tool"`` (a model without structured outputs that takes forced tool use) offers one tool,
:data:`batcher.facts.STRUCTURED_TOOL`, whose ``input_schema`` is that schema, and forces it with
``tool_choice``. The answer's JSON is then the text block, or the tool_use block's input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from batcher import facts
from batcher.core.cache import CachePoint, cache_control
from batcher.models import ModelProfile


@dataclass(frozen=True, slots=True)
class ImagePart:
    """One image as it goes on the wire."""

    kind: Literal["base64", "file", "url"]
    #: base64 text, a file id or a URL, by kind
    value: str
    media_type: str | None = None

    def source(self) -> dict[str, Any]:
        if self.kind == "base64":
            return {"type": "base64", "media_type": self.media_type, "data": self.value}
        if self.kind == "file":
            return {"type": "file", "file_id": self.value}
        return {"type": "url", "url": self.value}


@dataclass(frozen=True, slots=True)
class RequestSettings:
    """The job's [request] table, as bodies needs it."""

    max_tokens: int
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    effort: str | None = None
    stop_sequences: Sequence[str] | None = None


StructuredMode = Literal["format", "tool"]


@dataclass(frozen=True, slots=True)
class StructuredRequest:
    """How a job's output schema is asked for: its wire schema and the mode the model takes."""

    mode: StructuredMode
    #: the schema as sent (``OutputSpec.wire_schema``)
    schema: dict[str, Any]


def structured_params(structured: StructuredRequest, effort: str | None = None) -> dict[str, Any]:
    """The body keys that ask for ``structured``'s schema (``output_config`` carries ``effort``
    too, when given): the one place that knows both wire shapes."""
    if structured.mode == "format":
        config: dict[str, Any] = {"format": {"type": "json_schema", "schema": structured.schema}}
        if effort is not None:
            config = {"effort": effort, **config}
        return {"output_config": config}
    params: dict[str, Any] = {
        "tools": [
            {
                "name": facts.STRUCTURED_TOOL,
                "description": facts.STRUCTURED_TOOL_DESCRIPTION,
                "input_schema": structured.schema,
            }
        ],
        "tool_choice": {"type": "tool", "name": facts.STRUCTURED_TOOL},
    }
    if effort is not None:
        params["output_config"] = {"effort": effort}
    return params


@dataclass(frozen=True, slots=True)
class Example:
    """A few-shot example as it goes on the wire: its images (prepared as a row's are), its prompt,
    and the answer wanted, as text (with structured output: the answer's JSON)."""

    images: Sequence[ImagePart]
    prompt: str
    answer: str


def example_turns(examples: Sequence[Example], tool: bool) -> list[dict[str, Any]]:
    """The examples as user/assistant turns, in order. With a structured tool (``tool``), each
    answer is a call of that tool whose input is the answer, and the API wants every tool call
    answered: the turn after it (the next example's, or the row's own: see :func:`messages_body`)
    opens with its ``tool_result``."""
    turns: list[dict[str, Any]] = []
    for n, example in enumerate(examples):
        content = user_content(example.images, example.prompt)
        if tool and n:
            content.insert(0, _tool_result(n - 1))
        turns.append({"role": "user", "content": content})
        if tool:
            import orjson

            answer: dict[str, Any] = {
                "type": "tool_use",
                "id": _example_tool_id(n),
                "name": facts.STRUCTURED_TOOL,
                "input": orjson.loads(example.answer),
            }
        else:
            answer = {"type": "text", "text": example.answer}
        turns.append({"role": "assistant", "content": [answer]})
    return turns


def _example_tool_id(n: int) -> str:
    return f"toolu_example_{n + 1}"


def _tool_result(n: int) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": _example_tool_id(n), "content": "Recorded."}


def mark_breakpoint(body: dict[str, Any], point: CachePoint) -> None:
    """Put the job's one ``cache_control`` breakpoint on the last block every row shares: the
    examples' last block (an answer, or with a structured tool the ``tool_result`` that opens the
    row's own turn), else the system prompt's (sent as a text block to carry it)."""
    marker = cache_control(point.ttl)
    if point.anchor == "system":
        system = body["system"]
        blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system
        blocks[-1] = {**blocks[-1], "cache_control": marker}
        body["system"] = blocks
        return
    messages = body["messages"]
    own = messages[-1]["content"]
    if own and own[0].get("type") == "tool_result":
        own[0] = {**own[0], "cache_control": marker}
        return
    last = messages[-2]["content"]
    last[-1] = {**last[-1], "cache_control": marker}


def user_content(images: Sequence[ImagePart], prompt: str) -> list[dict[str, Any]]:
    """Images first, each labelled when there are several, then the prompt."""
    blocks: list[dict[str, Any]] = []
    for n, image in enumerate(images, start=1):
        if len(images) > 1:
            blocks.append({"type": "text", "text": f"Image {n}:"})
        blocks.append({"type": "image", "source": image.source()})
    blocks.append({"type": "text", "text": prompt})
    return blocks


def messages_body(
    profile: ModelProfile,
    settings: RequestSettings,
    images: Sequence[ImagePart],
    prompt: str,
    structured: StructuredRequest | None = None,
    examples: Sequence[Example] = (),
    cache: CachePoint | None = None,
) -> dict[str, Any]:
    """A row's body: the few-shot ``examples`` as turns before its own, and the ``cache``
    breakpoint (:mod:`batcher.core.cache`) at the end of what every row shares."""
    tool = structured is not None and structured.mode == "tool"
    own = user_content(images, prompt)
    if tool and examples:
        own.insert(0, _tool_result(len(examples) - 1))
    body: dict[str, Any] = {
        "model": profile.id,
        "max_tokens": settings.max_tokens,
        "messages": [*example_turns(examples, tool), {"role": "user", "content": own}],
    }
    if settings.system:
        body["system"] = settings.system
    if settings.stop_sequences:
        body["stop_sequences"] = list(settings.stop_sequences)
    if profile.sampling_params:
        for param in facts.SAMPLING_PARAMS:
            value = getattr(settings, param)
            if value is not None:
                body[param] = value
    if structured is not None:
        body.update(structured_params(structured, settings.effort))
    elif settings.effort is not None:
        body["output_config"] = {"effort": settings.effort}
    if cache is not None:
        mark_breakpoint(body, cache)
    return body


def betas_for(images: Sequence[ImagePart], files_beta: str) -> list[str]:
    """File references need the Files API beta on the messages call too."""
    return [files_beta] if any(image.kind == "file" for image in images) else []


def answer_text(message: dict[str, Any]) -> tuple[str, str | None]:
    """(the text of an answer, the JSON input of its tool_use block if any)."""
    import orjson

    texts: list[str] = []
    tool_input: str | None = None
    for block in message.get("content") or []:
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use" and tool_input is None:
            tool_input = orjson.dumps(block.get("input")).decode()
    return "".join(texts), tool_input
