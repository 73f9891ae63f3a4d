"""Header names and the hop-by-hop rules of RFC 9110 §7.6.1, named once."""

from __future__ import annotations

import re

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
# A stored response replays every end-to-end header of the miss that stored it (RFC 9111
# §3.1), Date included; only these are computed again for each answer.
# X-Request-ID is each request's own (request_ids.py), never the one of the stored miss.
COMPUTED_PER_ANSWER = frozenset({"age", "x-cache", "cache-status", "content-length",
                                 "x-request-id"})
# Request headers that tell an origin where and how it was reached, or which URL/method to
# act on. A service may build links or route from them, and they are not part of the
# variant, so a client's values never reach the upstream (web cache poisoning); the
# forwarded host and proto come from SIDECAR_PUBLIC_ORIGIN instead.
ORIGIN_STEERING = frozenset({
    "forwarded", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
    "x-forwarded-prefix", "x-forwarded-server", "x-forwarded-scheme", "x-forwarded-ssl",
    "x-original-url", "x-rewrite-url", "x-original-host", "x-host", "x-http-host-override",
    "x-http-method-override", "x-http-method", "x-method-override", "front-end-https",
    "x-url-scheme", "x-forwarded-uri", "x-envoy-original-path", "x-real-ip",
    "true-client-ip", "cf-connecting-ip", "x-client-ip", "x-cluster-client-ip",
})
# Conditional headers are evaluated by the sidecar on cacheable routes, so the upstream
# must return a full body that can be stored.
CONDITIONAL = frozenset({"if-none-match", "if-modified-since", "if-match",
                         "if-unmodified-since", "if-range"})


# Built once: the request path would otherwise rebuild these sets on every request.
_FORWARD_DROP = _REQUEST_DROP | ORIGIN_STEERING
# A fill asks for the whole representation: a HEAD's `Range` (ignored for HEAD, RFC 9110
# §14.2) must not make the fill's GET a partial one (a GET with `Range` never fills).
_FILL_DROP = _FORWARD_DROP | CONDITIONAL | {"range"}
_RESPONSE_DROP = frozenset({"content-length"})


def connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Every header the `Connection` header names is hop-by-hop for this message."""
    names: set[str] = set()
    for value in headers.getall("Connection", []):
        names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(names)


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """Copy `headers` without hop-by-hop ones and without the (lower-case) names in `drop`."""
    skip = HOP_BY_HOP | connection_named(headers) | drop
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


def client_headers(upstream: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Upstream response headers for the client; Content-Length is set from the body."""
    return end_to_end(upstream, _RESPONSE_DROP)


def upstream_request_headers(
    headers: CIMultiDictProxy[str], peer: str | None, origin: tuple[str, str] | None,
    *, strip_conditionals: bool = False,
) -> CIMultiDict[str]:
    """Headers to send upstream: end-to-end ones, X-Forwarded-For for the caller, and the
    configured public origin (proto, host) as X-Forwarded-Proto/-Host, never the client's.
    """
    out = end_to_end(headers, _FILL_DROP if strip_conditionals else _FORWARD_DROP)
    # `X_Forwarded_Host` reaches a WSGI/ASGI app as X-Forwarded-Host: names with `_` go.
    for name in [k for k in out if "_" in k]:
        out.popall(name, None)
    if peer:
        prior = ", ".join(out.getall("X-Forwarded-For", []))
        out.popall("X-Forwarded-For", None)
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    if origin is not None:
        out["X-Forwarded-Proto"], out["X-Forwarded-Host"] = origin
    return out


def has_token(headers: CIMultiDictProxy[str] | CIMultiDict[str], name: str, token: str) -> bool:
    """Whether a comma-separated header carries `token` (case-insensitive, args ignored)."""
    for value in headers.getall(name, []):
        for part in value.split(","):
            if part.split("=", 1)[0].strip().lower() == token:
                return True
    return False


# What aiohttp's writer refuses to send (`http_writer._FORBIDDEN_HEADER_CHARS_RE`): control
# characters other than TAB. A lenient upstream parser lets them in.
# A field name (RFC 9110 §5.6.2 token).
TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
UNSENDABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def has_unsendable_value(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    """Whether a response header holds a character no HTTP/1.1 answer may carry."""
    return any(UNSENDABLE.search(k) or UNSENDABLE.search(v) for k, v in headers.items())


def has_undecodable_value(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    """Whether a header value held bytes that are not UTF-8 (aiohttp keeps them as lone
    surrogates). Such a value cannot be forwarded byte for byte, and a credential must
    never be altered on the way, so the request is refused instead.
    """
    for value in headers.values():
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False
