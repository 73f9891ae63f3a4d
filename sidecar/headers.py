"""Header names and the hop-by-hop rules of RFC 9110 §7.6.1, named once."""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

X_CACHE = "X-Cache"
CACHE_STATUS = "Cache-Status"
AGE = "Age"
CACHE_NAME = "sidecar"

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# Never copied from the client: the proxy computes its own Host and Content-Length, and
# aiohttp has already answered any `Expect: 100-continue`.
_REQUEST_DROP = frozenset({"host", "content-length", "expect"})
# Headers a stored response replays; everything else (Date, Set-Cookie, X-Request-Id,
# Server, tracing ids) belongs to one exchange only.
STORED_RESPONSE_HEADERS = frozenset({
    "content-type", "content-encoding", "content-language", "content-location", "etag",
    "last-modified", "cache-control", "expires", "vary", "link",
})
# Conditional headers are evaluated by the sidecar on cacheable routes, so the upstream
# must return a full body that can be stored.
CONDITIONAL = frozenset({"if-none-match", "if-modified-since", "if-match",
                         "if-unmodified-since", "if-range"})


def connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Every header the `Connection` header names is hop-by-hop for this message."""
    names: set[str] = set()
    for value in headers.getall("Connection", []):
        names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(names)


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """Copy `headers` without hop-by-hop ones and without the names in `drop`."""
    skip = HOP_BY_HOP | connection_named(headers) | {d.lower() for d in drop}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


def client_headers(upstream: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Upstream response headers for the client; Content-Length is set from the body."""
    return end_to_end(upstream, drop=("content-length",))


def upstream_request_headers(
    headers: CIMultiDictProxy[str], peer: str | None, scheme: str, host: str | None,
    *, strip_conditionals: bool = False,
) -> CIMultiDict[str]:
    """Headers to send upstream: end-to-end ones plus X-Forwarded-* for the caller."""
    drop = set(_REQUEST_DROP)
    if strip_conditionals:
        drop |= CONDITIONAL
    out = end_to_end(headers, drop)
    if peer:
        prior = ", ".join(out.getall("X-Forwarded-For", []))
        out.popall("X-Forwarded-For", None)
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    # Ours, not the client's: an upstream that builds links from them must not be steered.
    out["X-Forwarded-Proto"] = scheme
    out.popall("X-Forwarded-Host", None)
    if host:
        out["X-Forwarded-Host"] = host
    return out


def has_token(headers: CIMultiDictProxy[str] | CIMultiDict[str], name: str, token: str) -> bool:
    """Whether a comma-separated header carries `token` (case-insensitive, args ignored)."""
    for value in headers.getall(name, []):
        for part in value.split(","):
            if part.split("=", 1)[0].strip().lower() == token:
                return True
    return False
