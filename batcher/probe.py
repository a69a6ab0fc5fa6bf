"""A profile for a model that ``configs/models.toml`` does not know, learned from the API itself.

``count_tokens`` is free: what two large synthetic images cost tells the model's native size. A
square image measures the visual-token budget, a very wide one the long-edge limit; the known
(edge, budget) pairs are tried against both counts, and when none reproduces them the smallest
known pair is used — batcher never guesses a model sees more than it does.

Prices cannot be probed: a probed model is priced at the highest known price (estimates and
budgets then err on the safe side) until the user writes its prices under ``[models.ID.prices]``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from batcher import facts
from batcher.models import ModelProfile, ModelRegistry

#: The two probe images: a square measures the token budget, a wide strip the edge limit.
PROBES: tuple[tuple[int, int], ...] = ((4000, 4000), (8000, 1000))
#: Counts may carry a few tokens of per-block framing beyond the image itself.
TOLERANCE = 16


def expected_counts(edge: int, budget: int) -> tuple[int, ...]:
    return tuple(facts.visual_tokens(*facts.api_resize(w, h, edge, budget)) for w, h in PROBES)


def infer_native(measured: tuple[int, ...], known: Iterable[tuple[int, int]]) -> tuple[int, int, bool]:
    """(edge, budget, matched) for measured image-token counts of :data:`PROBES`."""
    pairs = sorted(set(known), key=lambda p: (p[1], p[0]))
    for edge, budget in pairs:
        if all(abs(e - m) <= TOLERANCE for e, m in zip(expected_counts(edge, budget), measured, strict=True)):
            return edge, budget, True
    edge, budget = pairs[0]
    return edge, budget, False


def probe_image(width: int, height: int) -> str:
    """A solid PNG (tiny in bytes, large in pixels), as base64."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def probe_bodies(model_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The text-only baseline and one body per probe image, for ``count_tokens``."""

    def body(*blocks: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": model_id,
            "messages": [{"role": "user", "content": [*blocks, {"type": "text", "text": "probe"}]}],
        }

    images = [
        body(
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": probe_image(w, h)},
            }
        )
        for w, h in PROBES
    ]
    return body(), images


def probed_profile(
    model_id: str, info: Mapping[str, Any], edge: int, budget: int, registry: ModelRegistry
) -> ModelProfile:
    """A conservative profile: probed native size, the Models API's limits, the safe defaults."""
    template = min(registry.all(), key=lambda p: (p.images_per_request, p.native_edge))
    priciest = max(registry.all(), key=lambda p: p.prices.input + p.prices.output)
    caps = info.get("capabilities") or {}
    capabilities = {
        name: bool(v.get("supported")) if isinstance(v, Mapping) else bool(v) for name, v in caps.items()
    } or dict(template.capabilities)
    return replace(
        template,
        id=model_id,
        display_name=str(info.get("display_name") or model_id),
        ids=(),
        lifecycle="active",
        retires=None,
        created_at=None,
        context_window=int(info.get("max_input_tokens") or template.context_window),
        max_output_tokens=int(info.get("max_tokens") or template.max_output_tokens),
        native_edge=edge,
        image_token_budget=budget,
        budget_confirmed=False,
        max_image_b64_bytes=facts.PORTABLE_IMAGE_B64_BYTES,
        # omitting sampling parameters is always accepted; sending them may be a 400
        sampling_params=False,
        # not published for a model batcher does not know: the cache decision says so
        min_cacheable_tokens=None,
        capabilities=capabilities,
        prices=priciest.prices,
        source="probed through count_tokens",
    )


def to_meta(profile: ModelProfile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "native_edge": profile.native_edge,
        "image_token_budget": profile.image_token_budget,
        "context_window": profile.context_window,
        "max_output_tokens": profile.max_output_tokens,
        "capabilities": dict(profile.capabilities),
        "display_name": profile.display_name,
    }


def from_meta(meta: Mapping[str, Any], registry: ModelRegistry) -> ModelProfile:
    info = {
        "display_name": meta["display_name"],
        "max_input_tokens": meta["context_window"],
        "max_tokens": meta["max_output_tokens"],
        "capabilities": meta["capabilities"],
    }
    return probed_profile(meta["id"], info, meta["native_edge"], meta["image_token_budget"], registry)


async def probe_model(
    client: Any, model_id: str, info: Mapping[str, Any], registry: ModelRegistry
) -> tuple[ModelProfile, bool]:
    """(profile, matched a known size) for a model the table lacks; three free count_tokens calls."""
    baseline_body, image_bodies = probe_bodies(model_id)
    baseline = await client.count_tokens(baseline_body)
    measured = tuple([await client.count_tokens(b) - baseline for b in image_bodies])
    known = [(p.native_edge, p.image_token_budget) for p in registry.all()]
    edge, budget, matched = infer_native(measured, known)
    return probed_profile(model_id, info, edge, budget, registry), matched
