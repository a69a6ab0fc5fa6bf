"""The simulator's ledger: what it received and charged, for tests and benchmarks.

Served outside ``/v1`` (``GET /_ledger``) so a test can check, after a run, that no row was
charged twice, that no image needed resizing and how close to the limit a client ran.

What was charged, by kind: ``input_tokens`` counts every prompt token (cached or not, as
``count_tokens`` does); of those, ``cache_read_tokens`` were read from the prompt cache (billed at
the cache-read price), ``cache_write_5m_tokens`` and ``cache_write_1h_tokens`` written to it (at
the 5-minute and 1-hour write prices), and the rest, ``input_tokens - cache_read_tokens -
cache_write_5m_tokens - cache_write_1h_tokens`` (the snapshot's ``uncached_input_tokens``), at the
input price. Each has its ``batch_`` part, billed through Message Batches at the batch price.
``cache_hits`` / ``cache_misses`` count answered requests with a breakpoint that read something /
read nothing.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImageSeen:
    width: int
    height: int
    media_type: str
    source: str  # base64 | url | file
    b64_bytes: int
    resized_to: tuple[int, int] | None  # the API's own resize, when it had to make one
    tokens: int


@dataclass
class Ledger:
    requests: Counter[str] = field(default_factory=Counter)  # "POST /v1/messages 200" -> n
    input_tokens: int = 0
    output_tokens: int = 0
    image_tokens: int = 0
    #: the part of input_tokens / output_tokens billed through Message Batches (at the batch price)
    batch_input_tokens: int = 0
    batch_output_tokens: int = 0
    #: the part of input_tokens read from / written to the prompt cache, by kind
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    #: their parts billed through Message Batches
    batch_cache_read_tokens: int = 0
    batch_cache_write_5m_tokens: int = 0
    batch_cache_write_1h_tokens: int = 0
    #: answered requests with a cache breakpoint that read something / that read nothing
    cache_hits: int = 0
    cache_misses: int = 0
    #: bytes the Files API holds now (kept up to date by the file store)
    files_bytes_stored: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    charges_by_nonce: Counter[str] = field(default_factory=Counter)
    uploads_by_hash: Counter[str] = field(default_factory=Counter)
    images: list[ImageSeen] = field(default_factory=list)
    images_resized: int = 0
    #: (monotonic time, status) of every /v1/messages answer, for throughput and 429 shares
    message_log: list[tuple[float, int]] = field(default_factory=list)
    #: faults injected on purpose, by kind (overloaded, server_error, gateway_timeout, stall, drop;
    #: and the fatal auth_error, billing_error, spend_limit)
    faults: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self, method: str, path: str, status: int, when: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[f"{method} {_route_of(path)} {status}"] += 1
            if path == "/v1/messages":
                self.message_log.append((when, status))

    def charge(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        image_tokens: int,
        nonces: list[str],
        cache_read: int = 0,
        cache_write_5m: int = 0,
        cache_write_1h: int = 0,
        cache_breakpoint: bool = False,
    ) -> None:
        """A messages answer the API would bill (counted whether or not the client got it);
        ``input_tokens`` is the whole prompt, of which ``cache_*`` were read or written."""
        with self._lock:
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
            self.image_tokens += image_tokens
            self.cache_read_tokens += cache_read
            self.cache_write_5m_tokens += cache_write_5m
            self.cache_write_1h_tokens += cache_write_1h
            if cache_breakpoint:
                if cache_read:
                    self.cache_hits += 1
                else:
                    self.cache_misses += 1
            for nonce in nonces:
                self.charges_by_nonce[nonce] += 1

    def charge_batch(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read: int = 0,
        cache_write_5m: int = 0,
        cache_write_1h: int = 0,
    ) -> None:
        """Mark tokens already charged by :meth:`charge` as billed at the Message Batches price."""
        with self._lock:
            self.batch_input_tokens += input_tokens
            self.batch_output_tokens += output_tokens
            self.batch_cache_read_tokens += cache_read
            self.batch_cache_write_5m_tokens += cache_write_5m
            self.batch_cache_write_1h_tokens += cache_write_1h

    def files_stored(self, total_bytes: int) -> None:
        with self._lock:
            self.files_bytes_stored = total_bytes

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def saw_images(self, seen: list[ImageSeen]) -> None:
        with self._lock:
            self.images.extend(seen)
            self.images_resized += sum(1 for s in seen if s.resized_to is not None)

    def uploaded(self, sha256: str) -> None:
        with self._lock:
            self.uploads_by_hash[sha256] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            by_status: dict[str, dict[str, int]] = defaultdict(dict)
            for key, n in self.requests.items():
                route, status = key.rsplit(" ", 1)
                by_status[route][status] = n
            return {
                "requests": dict(by_status),
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "image_tokens": self.image_tokens,
                "batch_input_tokens": self.batch_input_tokens,
                "batch_output_tokens": self.batch_output_tokens,
                "cache_read_tokens": self.cache_read_tokens,
                "cache_write_5m_tokens": self.cache_write_5m_tokens,
                "cache_write_1h_tokens": self.cache_write_1h_tokens,
                "uncached_input_tokens": self.input_tokens
                - self.cache_read_tokens
                - self.cache_write_5m_tokens
                - self.cache_write_1h_tokens,
                "batch_cache_read_tokens": self.batch_cache_read_tokens,
                "batch_cache_write_5m_tokens": self.batch_cache_write_5m_tokens,
                "batch_cache_write_1h_tokens": self.batch_cache_write_1h_tokens,
                "batch_uncached_input_tokens": self.batch_input_tokens
                - self.batch_cache_read_tokens
                - self.batch_cache_write_5m_tokens
                - self.batch_cache_write_1h_tokens,
                "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses,
                "files_bytes_stored": self.files_bytes_stored,
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
                "charges_by_nonce": dict(self.charges_by_nonce),
                "double_charged": sorted(k for k, n in self.charges_by_nonce.items() if n > 1),
                "uploads_by_hash": dict(self.uploads_by_hash),
                "images": [
                    {
                        "width": s.width,
                        "height": s.height,
                        "media_type": s.media_type,
                        "source": s.source,
                        "b64_bytes": s.b64_bytes,
                        "resized_to": list(s.resized_to) if s.resized_to else None,
                        "tokens": s.tokens,
                    }
                    for s in self.images
                ],
                "images_resized": self.images_resized,
                "message_log": [[t, s] for t, s in self.message_log],
                "faults": dict(self.faults),
            }


def _route_of(path: str) -> str:
    """Collapse ids out of a path so the ledger counts by route (``/v1/files/{id}``)."""
    parts = path.split("/")
    out = []
    for i, part in enumerate(parts):
        prev = parts[i - 1] if i else ""
        if prev in ("files", "batches", "models") and part and part not in ("batches",):
            out.append("{id}")
        else:
            out.append(part)
    return "/".join(out)
