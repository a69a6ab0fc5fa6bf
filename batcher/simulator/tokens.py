"""How the simulator counts tokens: a simple, exactly reproducible rule.

batcher's own estimator is checked against these numbers, so the rule is kept small enough to
restate in a few lines and is computed in integers only (no float rounding can differ):

- **Text** of ``b`` UTF-8 bytes costs ``ceil(b * F / 400)`` tokens, where ``F`` is the model's
  ``text_token_factor`` in hundredths (``round(factor * 100)``): about 4 bytes a token on the
  older tokenizer, 30% more tokens on the newer one (factor 1.3). Empty text costs nothing.
- **Images** cost ``IMAGE_BLOCK_OVERHEAD`` plus their visual tokens, ``facts.visual_tokens`` of
  the size the model sees them at (``ModelProfile.native_size``).
- **Each message** costs ``MESSAGE_OVERHEAD`` (the role marker and turn separators).
- **Tool definitions** cost the text rule over their compact JSON
  (``{"name", "description", "input_schema"}``, keys in that order, absent ones left out);
  a ``tool_use`` block in the history costs the text rule over ``name + compact JSON(input)``.
- **Output** text costs the text rule; a ``tool_use`` answer the same as a ``tool_use`` block.

A request's input tokens are the sum over the system prompt, the tool definitions and every
block of every message.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from batcher import facts
from batcher.models import ModelProfile

MESSAGE_OVERHEAD: Final = 3
IMAGE_BLOCK_OVERHEAD: Final = 3


def factor_hundredths(profile: ModelProfile) -> int:
    """The model's ``text_token_factor`` as an integer number of hundredths."""
    return round(profile.text_token_factor * 100)


def text_tokens_for_bytes(n_bytes: int, f100: int) -> int:
    """Tokens for ``n_bytes`` of UTF-8 text at a factor of ``f100`` hundredths."""
    return -(-n_bytes * f100 // 400)


def text_tokens(text: str, f100: int) -> int:
    """Tokens for a text (see the module docstring)."""
    return text_tokens_for_bytes(len(text.encode("utf-8")), f100) if text else 0


def max_bytes_for_tokens(tokens: int, f100: int) -> int:
    """The most UTF-8 bytes whose text costs at most ``tokens``: where an answer is cut."""
    return tokens * 400 // f100


def image_tokens(profile: ModelProfile, width: int, height: int) -> tuple[int, tuple[int, int]]:
    """(visual tokens, the size the model sees) for an image sent at ``width`` x ``height``."""
    seen = profile.native_size(width, height)
    return facts.visual_tokens(*seen), seen


def tool_definition_text(tool: dict[str, Any]) -> str:
    """The text a tool definition is counted as."""
    shown = {k: tool[k] for k in ("name", "description", "input_schema") if k in tool}
    return orjson.dumps(shown).decode()


def tool_use_text(name: str, tool_input: Any) -> str:
    """The text a ``tool_use`` block (asked or answered) is counted as."""
    return name + orjson.dumps(tool_input).decode()
