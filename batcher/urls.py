"""Where an image comes from, and where a download may go: pure decisions, no sockets.

One rule for every part of batcher that meets an image source (the manifest, the run, ``batcher
estimate``, ``batcher prepare``, the Files API memo):

* ``scheme://...`` with scheme ``http`` or ``https``, in any case (RFC 3986 schemes are
  case-insensitive: ``HTTP://x`` is a URL) is a **url**, downloaded by the run;
* ``scheme://...`` with an object store's scheme (:data:`OBJECT_SCHEMES`: ``s3``, ``gs``/``gcs``,
  ``az``/``abfs``/``abfss``) is an **object**, read through fsspec by :mod:`batcher.stores`;
* ``scheme://...`` with any other scheme (``file://``, ``ftp://``, ``data://``...) is
  **unsupported**: the row fails with ``unsupported_scheme`` naming the scheme, never a file lookup
  of a mangled path;
* anything else is a **local** path. A scheme needs two characters or more, so ``C://x`` stays a path.

Downloads connect only to global unicast addresses: loopback, private (RFC 1918, unique local),
link-local (169.254/16 with the cloud metadata endpoint, fe80::/10), CGNAT, multicast, reserved and
unspecified addresses are refused (``blocked_address``) unless ``[images] allow_private_urls = true``,
for the URL itself and for every redirect. The check is made by the network layer
(:mod:`batcher.api.download`) on the very addresses it connects to, so a name that resolves to a
public address when checked and a private one when connected (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

#: The schemes batcher downloads.
SCHEMES: tuple[str, ...] = ("http", "https")
#: Redirects a download may follow before it fails.
MAX_REDIRECTS = 5
#: HTTP statuses that redirect (with a Location header).
REDIRECTS = frozenset({301, 302, 303, 307, 308})

#: Object stores' schemes, and the store each belongs to (:mod:`batcher.stores` reads them).
OBJECT_SCHEMES: dict[str, str] = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
}

SourceKind = Literal["url", "object", "local", "unsupported"]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+)://")


def scheme_of(source: str) -> str | None:
    """The scheme of a ``scheme://...`` source, lower case; None for a path."""
    if "://" not in source:  # the common case, cheaply: this runs for every image of every row
        return None
    match = _SCHEME.match(source)
    return match.group(1).lower() if match else None


def source_kind(source: str) -> SourceKind:
    """``url`` (http/https, any case), ``object`` (an object store's URI), ``unsupported`` (another
    scheme) or ``local`` (a path)."""
    scheme = scheme_of(source)
    if scheme is None:
        return "local"
    if scheme in SCHEMES:
        return "url"
    return "object" if scheme in OBJECT_SCHEMES else "unsupported"


def is_url(source: object) -> bool:
    """An http(s) URL in any case (the sources a run downloads, or sends as they are)."""
    return isinstance(source, str) and source_kind(source) == "url"


def is_object(source: object) -> bool:
    """An object store URI (``s3://bucket/key``...), read through :mod:`batcher.stores`."""
    return isinstance(source, str) and source_kind(source) == "object"


def is_remote(source: object) -> bool:
    """Fetched by the run rather than read as a local file: an http(s) URL or an object store URI.
    Its content hash covers the source as written (nothing is stat'ed per row)."""
    return isinstance(source, str) and source_kind(source) in ("url", "object")


def unsupported_scheme_message(source: str) -> str | None:
    """Why ``source`` cannot be fetched (its scheme is neither http(s) nor an object store's), or
    None when it is fine."""
    scheme = scheme_of(source)
    if scheme is None or scheme in SCHEMES or scheme in OBJECT_SCHEMES:
        return None
    return scheme_refusal(scheme)


def scheme_refusal(scheme: str) -> str:
    """The message for a refused scheme: it names the scheme, not the whole source (the row
    already names that, and a URL's query may hold credentials)."""
    return (
        f"unsupported scheme {scheme.lower()!r}: only http(s) URLs and object store URIs "
        f"({', '.join(f'{s}://' for s in OBJECT_SCHEMES)}) are fetched"
    )


def refused_address(address: str, *, allow_private: bool) -> str | None:
    """What kind of address ``address`` (an IP literal) is when a download may not connect to it
    (``"a loopback address"``...), or None when it may."""
    if allow_private:
        return None
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    for what, test in (
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("a multicast", ip.is_multicast),
        ("an unspecified", ip.is_unspecified),
        ("a private", ip.is_private),
    ):
        if test:
            return f"{what} address"
    return None if ip.is_global else "not a global address"
