"""The limiter's input-token cost of a request, against what the API (the simulator) counts."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from batcher import facts
from batcher.api.bodies import ImagePart, RequestSettings, messages_body
from batcher.models import load_registry
from batcher.ratelimit import request_cost
from batcher.tokens import estimate_text_tokens


def jpeg(width: int, height: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(out, "JPEG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize("model", ["claude-haiku-5-5", "claude-haiku-4-5"])
def test_a_rows_cost_is_what_the_api_counts(simulator, model: str) -> None:  # type: ignore[no-untyped-def]
    profile = load_registry().get(model)
    assert profile is not None
    sizes = [(1036, 1036), (640, 480)]
    parts = [ImagePart("base64", jpeg(w, h), "image/jpeg") for w, h in sizes]
    prompt = "Describe both images: the colours, the shapes, and anything written. nonce=row-1 ünïcode"
    body = messages_body(profile, RequestSettings(max_tokens=50, system="You caption images."), parts, prompt)
    cost = request_cost(body, profile, [facts.visual_tokens(w, h) for w, h in sizes], 50)
    counted = httpx.post(f"{simulator.base_url}/v1/messages/count_tokens",
                         json={k: v for k, v in body.items() if k != "max_tokens"},
                         headers={"x-api-key": "t", "anthropic-version": facts.API_VERSION}).json()
    assert cost.input_tokens == counted["input_tokens"]
    assert cost.max_tokens == 50


def test_text_tokens_scale_with_the_models_tokenizer() -> None:
    registry = load_registry()
    old, new = registry.get("claude-haiku-4-5"), registry.get("claude-haiku-5-5")
    assert old is not None and new is not None
    text = "x" * 400
    assert estimate_text_tokens(text, old) == 100
    assert estimate_text_tokens(text, new) == 100 * new.text_token_factor
    assert estimate_text_tokens("", new) == 0
    assert estimate_text_tokens("é", old) == 1  # two bytes still cost a whole token
