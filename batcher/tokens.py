"""Client-side token estimates: what a request body will cost in input tokens, before sending it.

Image tokens are exact: the patch rule over the size batcher sends (``ModelProfile.image_tokens``).
Text tokens are an estimate: the tokenizer is the API's, so batcher counts about four UTF-8 bytes a
token, scaled by the model's ``text_token_factor`` (the newer tokenizer counts ~30% more), and a few
tokens of framing per message and per image block. ``batcher estimate --exact-sample N`` measures
the real figure through the free ``count_tokens`` endpoint when the difference matters.

The numbers are integers throughout, so two estimates of the same body never differ by rounding.
The simulator does not share this rule: it counts with its own stand-in for the API's tokenizer
(``batcher/simulator/tokens.py``, BPE-like pieces), and neither module imports the other, so the
tests that compare an estimate with what the simulator counts can fail on text. Against it, the
estimate is close on short prompts, high on plain English prose (about 4.5 bytes a token there) and
low on text full of digits, punctuation or identifiers; image tokens and the framing agree exactly.

Structured output adds the schema to every request's input (:func:`estimate_schema_tokens`): the
canonical JSON of ``output_config.format.schema``, or of each tool definition (name, description,
input schema) in tool mode, counted as text, plus :data:`SCHEMA_FRAMING` tokens for the
instructions the API wraps around it. That is an estimate too (the API does not publish its
framing): ``--exact-sample`` measures it, since the bodies it sends carry the schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from batcher.models import ModelProfile

#: Tokens of framing for each message (role marker, turn separators).
MESSAGE_OVERHEAD: Final = 3
#: Tokens of framing for each image block, beyond its visual tokens.
IMAGE_BLOCK_OVERHEAD: Final = 3
#: UTF-8 bytes per token on the older tokenizer (text_token_factor 1.0), in hundredths of a token.
_BYTES_PER_TOKEN_X100: Final = 400
#: Tokens of framing around a structured-output schema or a tool definition (the instructions the
#: API adds for it): a stated allowance, not a measured figure.
SCHEMA_FRAMING: Final = 40


def factor_hundredths(profile: ModelProfile) -> int:
    """The model's ``text_token_factor`` as a whole number of hundredths."""
    return round(profile.text_token_factor * 100)


def estimate_text_tokens(text: str, profile: ModelProfile) -> int:
    """Estimated tokens for ``text`` on ``profile``'s tokenizer (0 for empty text)."""
    if not text:
        return 0
    n_bytes = len(text.encode("utf-8"))
    return -(-n_bytes * factor_hundredths(profile) // _BYTES_PER_TOKEN_X100)


def canonical_json(value: object) -> str:
    """Compact JSON, keys sorted: the same text for the same schema, whatever order it was built in."""
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def estimate_schema_tokens(body: Mapping[str, Any], profile: ModelProfile) -> int:
    """Estimated input tokens the body's structured-output schema or tool definitions add (0 for
    a body with neither)."""
    tokens = 0
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, Mapping) else None
    if isinstance(fmt, Mapping) and fmt.get("schema") is not None:
        tokens += SCHEMA_FRAMING + estimate_text_tokens(canonical_json(fmt["schema"]), profile)
    for tool in body.get("tools") or []:
        shown = {k: tool[k] for k in ("name", "description", "input_schema") if k in tool}
        tokens += SCHEMA_FRAMING + estimate_text_tokens(canonical_json(shown), profile)
    return tokens


def estimate_body_tokens(
    body: Mapping[str, Any], profile: ModelProfile, image_tokens: Callable[[int, dict[str, Any]], int]
) -> tuple[int, int]:
    """(text-and-framing tokens, image tokens) of a messages body (the text includes a structured
    output schema's tokens: :func:`estimate_schema_tokens`).

    ``image_tokens(n, block)`` answers the visual tokens of the n-th image block (0-based, in body
    order): the caller knows the sizes the images are sent at, the body (a URL, a file id) may not.
    """
    text = estimate_schema_tokens(body, profile)
    images = 0
    system = body.get("system")
    if isinstance(system, str):
        text += estimate_text_tokens(system, profile)
    elif isinstance(system, list):
        text += sum(estimate_text_tokens(str(b.get("text", "")), profile) for b in system)
    n_image = 0
    for message in body.get("messages") or []:
        text += MESSAGE_OVERHEAD
        content = message.get("content")
        if isinstance(content, str):
            text += estimate_text_tokens(content, profile)
            continue
        for block in content or []:
            if block.get("type") == "image":
                text += IMAGE_BLOCK_OVERHEAD
                images += image_tokens(n_image, block)
                n_image += 1
            elif block.get("type") == "text":
                text += estimate_text_tokens(str(block.get("text", "")), profile)
            elif block.get("type") in ("tool_use", "tool_result"):
                text += estimate_tool_block_tokens(block, profile)
    return text, images


#: Tokens of framing around a tool_use or tool_result block (its markers and ids): an allowance.
TOOL_BLOCK_OVERHEAD: Final = 10


def estimate_tool_block_tokens(block: Mapping[str, Any], profile: ModelProfile) -> int:
    """Estimated tokens of a ``tool_use`` block (its name and the input's JSON) or a
    ``tool_result`` block (its text content), with :data:`TOOL_BLOCK_OVERHEAD` of framing; a
    few-shot example's answer goes as one with a structured tool."""
    if block.get("type") == "tool_use":
        shown = str(block.get("name", "")) + canonical_json(block.get("input"))
        return TOOL_BLOCK_OVERHEAD + estimate_text_tokens(shown, profile)
    content = block.get("content")
    if isinstance(content, str):
        return TOOL_BLOCK_OVERHEAD + estimate_text_tokens(content, profile)
    texts = [str(b.get("text", "")) for b in content or [] if isinstance(b, Mapping)]
    return TOOL_BLOCK_OVERHEAD + sum(estimate_text_tokens(t, profile) for t in texts)
