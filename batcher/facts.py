"""The API's fixed facts: the one place that knows them.

Both the client side (sizing, request bodies, retries, batches) and the simulator read their limits
from here, so the two can never drift apart. Per-model numbers (native size, visual-token budget,
images per request, bytes per image, prices) are *not* here: they live in ``configs/models.toml``
and are answered by :mod:`batcher.models`.

Sources: ``shared/api/NOTES.md`` (the digest) and the vision guide; where the current API differs
from the guide's older edition, the current rule is what is written here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

API_VERSION: Final = "2023-06-01"
DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
FILES_BETA: Final = "files-api-2025-04-14"

# --- images -----------------------------------------------------------------------------------

MEDIA_TYPES: Final = ("image/jpeg", "image/png", "image/gif", "image/webp")
#: The portable ceiling for one image's base64 string: every platform (API, Bedrock, Vertex)
#: accepts it. Some models accept more on the Claude API; see ``ModelProfile.max_image_b64_bytes``.
PORTABLE_IMAGE_B64_BYTES: Final = 5 * 1024 * 1024
MAX_IMAGE_EDGE: Final = 8000
#: Over this many images in one request, each image must also fit MANY_IMAGES_EDGE a side.
MANY_IMAGES_THRESHOLD: Final = 20
MANY_IMAGES_EDGE: Final = 2000
#: The guide warns that accuracy drops below this many pixels on a side.
SMALL_IMAGE_EDGE: Final = 200
#: Visual tokens are counted per PATCH x PATCH square, the image padded right/bottom.
PATCH: Final = 28

MAX_REQUEST_BODY_BYTES: Final = 32 * 1024 * 1024


def sniff_media_type(head: bytes) -> str | None:
    """The API media type that these leading bytes really are, or None for anything else."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def b64_len(raw_bytes: int) -> int:
    """Length of the base64 string for ``raw_bytes`` bytes (the API measures images on it)."""
    return 4 * math.ceil(raw_bytes / 3)


def visual_tokens(width: int, height: int) -> int:
    """Tokens an image costs when sent at this size: one per 28x28 patch, padded."""
    return math.ceil(width / PATCH) * math.ceil(height / PATCH)


def _scaled(long_edge: int, width: int, height: int) -> tuple[int, int]:
    """The aspect-preserving size whose long edge is ``long_edge`` (short side floored)."""
    if width >= height:
        return long_edge, max(1, long_edge * height // width)
    return max(1, long_edge * width // height), long_edge


def _fits(width: int, height: int, max_edge: int, max_tokens: int) -> bool:
    padded_long = math.ceil(max(width, height) / PATCH) * PATCH
    return padded_long <= max_edge and visual_tokens(width, height) <= max_tokens


def api_resize(width: int, height: int, max_edge: int, max_tokens: int) -> tuple[int, int]:
    """The size at which the API sees an image: the current guide's rule.

    The largest aspect-preserving size, never larger than the original, whose padded sides fit
    ``max_edge`` and whose visual tokens fit ``max_tokens``; found, as the guide does, by a binary
    search over the long edge. An image already within both is returned unchanged.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if _fits(width, height, max_edge, max_tokens):
        return width, height
    lo, hi = 1, max(width, height)  # lo always fits (1 px long edge), hi never does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(*_scaled(mid, width, height), max_edge, max_tokens):
            lo = mid
        else:
            hi = mid
    return _scaled(lo, width, height)


# --- requests and batches -----------------------------------------------------------------------

CUSTOM_ID_PATTERN: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
BATCH_MAX_REQUESTS: Final = 100_000
BATCH_MAX_BYTES: Final = 256 * 1024 * 1024
BATCH_EXPIRY_HOURS: Final = 24
#: batcher's own default size for one batch's body: well under the API's limit, because the whole
#: body is held in memory and a failed upload is sent again whole.
BATCH_DEFAULT_BYTES: Final = 64 * 1024 * 1024
FILES_EXPIRES_MIN_S: Final = 3600
FILES_EXPIRES_MAX_S: Final = 7_776_000
#: The Files API's ceiling for one uploaded file.
FILE_MAX_BYTES: Final = 500 * 1024 * 1024
#: The Files API's own request budget during its beta (uploads, lists, deletes): about this many
#: requests a minute, separate from the messages limits.
FILES_RPM: Final = 100
SAMPLING_PARAMS: Final = ("temperature", "top_p", "top_k")

# --- errors and retries -----------------------------------------------------------------------

#: HTTP status -> the error ``type`` the API puts in its body.
ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
RETRYABLE_STATUSES: Final = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
#: Statuses that mean nothing else the job sends can succeed either.
FATAL_STATUSES: Final = frozenset({401, 402})
SPEND_LIMIT_CODE: Final = "enforced_spend_limit_reached"


def should_retry(status: int, should_retry_header: str | None, error_code: str | None) -> bool:
    """Whether a failed request may be sent again: ``x-should-retry`` first, as the SDK does."""
    if error_code == SPEND_LIMIT_CODE:
        return False
    if should_retry_header is not None:
        value = should_retry_header.strip().lower()
        if value in ("true", "false"):
            return value == "true"
    return status in RETRYABLE_STATUSES or status >= 500


# --- rate limits --------------------------------------------------------------------------------

RATE_LIMIT_KINDS: Final = ("requests", "input-tokens", "output-tokens", "tokens")


def ratelimit_header(kind: str, field: str) -> str:
    """``anthropic-ratelimit-{kind}-{field}``; field is limit, remaining or reset."""
    return f"anthropic-ratelimit-{kind}-{field}"


# --- messages request fields --------------------------------------------------------------------

#: Every value the ``anthropic-beta`` header may carry (the OpenAPI ``AnthropicBeta`` enum); the API
#: answers 400 to any other.
KNOWN_BETAS: Final = frozenset(
    {
        "message-batches-2024-09-24",
        "prompt-caching-2024-07-31",
        "computer-use-2024-10-22",
        "computer-use-2025-01-24",
        "pdfs-2024-09-25",
        "token-counting-2024-11-01",
        "token-efficient-tools-2025-02-19",
        "output-128k-2025-02-19",
        FILES_BETA,
        "mcp-client-2025-04-04",
        "mcp-client-2025-11-20",
        "dev-full-thinking-2025-05-14",
        "interleaved-thinking-2025-05-14",
        "code-execution-2025-05-22",
        "extended-cache-ttl-2025-04-11",
        "context-1m-2025-08-07",
        "context-management-2025-06-27",
        "model-context-window-exceeded-2025-08-26",
        "skills-2025-10-02",
        "fast-mode-2026-02-01",
        "output-300k-2026-03-24",
        "user-profiles-2026-03-24",
        "advisor-tool-2026-03-01",
        "managed-agents-2026-04-01",
        "cache-diagnosis-2026-04-07",
        "thinking-token-count-2026-05-13",
        "server-side-fallback-2026-06-01",
        "fallback-credit-2026-06-01",
        "agent-memory-2026-07-22",
    }
)
#: ``output_config.effort`` levels, lowest first.
EFFORT_LEVELS: Final = ("low", "medium", "high", "xhigh", "max")
#: ``cache_control`` breakpoints allowed in one request, and each TTL in seconds.
MAX_CACHE_BREAKPOINTS: Final = 4
CACHE_TTL_S: Final[Mapping[str, int]] = {"5m": 300, "1h": 3600}

# --- structured output ----------------------------------------------------------------------------
#: Forced tool use (the fallback for a model without ``output_config.format``): the one tool the
#: request offers and forces, whose ``input_schema`` is the job's schema.
STRUCTURED_TOOL: Final = "record_answer"
STRUCTURED_TOOL_DESCRIPTION: Final = (
    "Record the answer about the image(s). Call this tool exactly once with the answer as its input."
)
#: ``stop_reason`` values that end a structured answer without usable JSON.
STOP_REFUSAL: Final = "refusal"
STOP_MAX_TOKENS: Final = "max_tokens"
