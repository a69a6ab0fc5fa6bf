"""The limiter's input-token cost of a request, against what the API (the simulator) counts.

The simulator tokenizes text its own way (``batcher/simulator/tokens.py``), so text is compared
within a tolerance and images, whose tokens are a fixed rule, exactly.
"""

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
from batcher.tokens import IMAGE_BLOCK_OVERHEAD, estimate_text_tokens


def jpeg(width: int, height: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(out, "JPEG")
    return base64.b64encode(out.getvalue()).decode()


def count(simulator, body: dict) -> int:  # type: ignore[no-untyped-def]
    answer = httpx.post(
        f"{simulator.base_url}/v1/messages/count_tokens",
        json={k: v for k, v in body.items() if k != "max_tokens"},
        headers={"x-api-key": "t", "anthropic-version": facts.API_VERSION},
    )
    return int(answer.json()["input_tokens"])


@pytest.mark.parametrize("model", ["claude-haiku-5-5", "claude-haiku-4-5"])
def test_a_rows_cost_is_near_what_the_api_counts_and_exact_for_images(simulator, model: str) -> None:  # type: ignore[no-untyped-def]
    profile = load_registry().get(model)
    assert profile is not None
    sizes = [(1036, 1036), (640, 480)]
    parts = [ImagePart("base64", jpeg(w, h), "image/jpeg") for w, h in sizes]
    prompt = "Describe both images: the colours, the shapes, and anything written. nonce=row-1 ünïcode"
    body = messages_body(profile, RequestSettings(max_tokens=50, system="You caption images."), parts, prompt)
    image_tokens = [facts.visual_tokens(w, h) for w, h in sizes]
    cost = request_cost(body, profile, image_tokens, 50)
    counted = count(simulator, body)
    # text is the API's tokenizer (the simulator's stand-in), which the estimate only approaches
    assert abs(cost.input_tokens - counted) <= 0.05 * counted
    assert cost.max_tokens == 50
    # images are exact: the same body without its image blocks costs their tokens and framing less
    [message] = body["messages"]
    text_only = {
        **body,
        "messages": [{**message, "content": [b for b in message["content"] if b["type"] != "image"]}],
    }
    without = request_cost(text_only, profile, [], 50)
    assert cost.input_tokens - without.input_tokens == counted - count(simulator, text_only)
    assert counted - count(simulator, text_only) == sum(image_tokens) + 2 * IMAGE_BLOCK_OVERHEAD


def test_text_tokens_scale_with_the_models_tokenizer() -> None:
    registry = load_registry()
    old, new = registry.get("claude-haiku-4-5"), registry.get("claude-haiku-5-5")
    assert old is not None and new is not None
    text = "x" * 400
    assert estimate_text_tokens(text, old) == 100
    assert estimate_text_tokens(text, new) == 100 * new.text_token_factor
    assert estimate_text_tokens("", new) == 0
    assert estimate_text_tokens("é", old) == 1  # two bytes still cost a whole token
