"""A hit looks like the miss that stored it (RFC 9111 §3.1): same headers, same Date.

Only `Age`, `X-Cache` and `Cache-Status` may differ.
"""

from __future__ import annotations

import asyncio
from email.utils import formatdate

from redis.asyncio import Redis

from tests.conftest import TOKEN_A, Stack

PATIENT = "/api/v1/patients/42"
SERVICE_HEADERS = [
    ("Access-Control-Allow-Origin", "https://app.example.org"),
    ("Access-Control-Expose-Headers", "ETag, X-Total-Count"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Strict-Transport-Security", "max-age=63072000; includeSubDomains"),
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", "geolocation=()"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("X-Total-Count", "1"),
    ("X-Api-Version", "2026-11"),
    ("Content-Language", "fr"),
    ("Cache-Control", "public, max-age=600"),
    ("Warning", '199 - "test"'),
    ("X-Custom-One", "1"),
    ("X-Custom-Two", "two"),
    ("Link", '</api/v1/patients/42/history>; rel="version-history"'),
    ("X-Dup", "first"),
    ("X-Dup", "second"),
]
PER_ANSWER = {"age", "x-cache", "cache-status", "x-request-id"}


def _comparable(headers: object) -> list[tuple[str, str]]:
    items = headers.items()  # type: ignore[attr-defined]
    return [(k.lower(), v) for k, v in items if k.lower() not in PER_ANSWER]


async def test_hit_replays_every_header_of_its_miss(stack: Stack, redis_client: Redis) -> None:
    hooks = [("X-Stub-Header", f"{k}: {v}") for k, v in SERVICE_HEADERS]
    url = stack.proxy.base + PATIENT
    async with stack.proxy.session.get(url, headers=[*hooks, ("Authorization", TOKEN_A)]) as r:
        miss_headers, miss_body = r.headers, await r.read()
    assert miss_headers["X-Cache"] == "MISS"
    assert len(SERVICE_HEADERS) == 21
    hit = await stack.proxy.get(PATIENT)
    assert hit.x_cache == "HIT" and hit.body == miss_body
    assert _comparable(hit.headers) == _comparable(miss_headers)
    assert hit.headers.getall("X-Dup") == ["first", "second"]
    assert "Age" in hit.headers


async def test_hop_by_hop_and_connection_named_headers_are_not_stored(
    stack: Stack, redis_client: Redis
) -> None:
    hooks = [("X-Stub-Header", "Connection: X-Secret-Hop"), ("X-Stub-Header", "X-Secret-Hop: 1"),
             ("X-Stub-Header", "Keep-Alive: timeout=5"), ("X-Stub-Header", "X-Kept: yes")]
    url = stack.proxy.base + PATIENT
    async with stack.proxy.session.get(url, headers=[*hooks, ("Authorization", TOKEN_A)]) as r:
        assert r.status == 200
    hit = await stack.proxy.get(PATIENT)
    assert hit.x_cache == "HIT" and hit.headers["X-Kept"] == "yes"
    assert "X-Secret-Hop" not in hit.headers and "Keep-Alive" not in hit.headers


async def test_if_modified_since_uses_the_stored_date_without_last_modified(
    stack: Stack, redis_client: Redis
) -> None:
    """RFC 9111 §4.3.2: no Last-Modified, so the stored Date is the comparison point."""
    miss = await stack.proxy.get(PATIENT, headers={"X-Stub-Header": "Last-Modified:"})
    assert "Last-Modified" not in miss.headers or not miss.headers["Last-Modified"]
    stored_date = miss.headers["Date"]
    later = formatdate(2_000_000_000, usegmt=True)
    since = await stack.proxy.get(PATIENT, headers={"If-Modified-Since": later})
    assert since.x_cache == "HIT" and since.status == 304
    assert since.headers["Date"] == stored_date
    earlier = formatdate(0, usegmt=True)
    full = await stack.proxy.get(PATIENT, headers={"If-Modified-Since": earlier})
    assert full.status == 200


async def _raw_get(base: str, request_head: str) -> tuple[bytes, list[tuple[str, str]], bytes]:
    """One request over a raw socket: status line, headers in wire order, body."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request_head.encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status, *lines = head.decode().split("\r\n")[:-2]
        headers = [(n.lower(), v) for n, v in (line.split(": ", 1) for line in lines)]
        length = int(dict(headers)["content-length"])
        return status.encode(), headers, await reader.readexactly(length)
    finally:
        writer.close()


async def test_one_buffer_hit_sends_the_bytes_of_the_ordinary_hit(
    stack: Stack, redis_client: Redis
) -> None:
    """A keep-alive HTTP/1.1 hit is written as one buffer (sidecar/wire.py); HTTP/1.0 and
    `Connection: close` take aiohttp's ordinary response. Both must send the same thing."""
    hooks = [("X-Stub-Header", f"{k}: {v}") for k, v in SERVICE_HEADERS]
    auth = ("Authorization", TOKEN_A)
    async with stack.proxy.session.get(stack.proxy.base + PATIENT, headers=[*hooks, auth]) as r:
        assert r.headers["X-Cache"] == "MISS"
    request = f"GET {PATIENT} HTTP/1.1\r\nHost: identity\r\nAuthorization: {TOKEN_A}\r\n"
    plain = await _raw_get(stack.proxy.base, request + "\r\n")
    closing = await _raw_get(stack.proxy.base, request + "Connection: close\r\n\r\n")
    old = await _raw_get(stack.proxy.base, f"GET {PATIENT} HTTP/1.0\r\nHost: identity\r\n"
                         f"Authorization: {TOKEN_A}\r\n\r\n")
    for _status, headers, body in (plain, closing, old):
        assert dict(headers)["x-cache"] == "HIT" and body == plain[2]
    assert plain[0] == closing[0] == b"HTTP/1.1 200 OK" and old[0] == b"HTTP/1.0 200 OK"

    def same(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return sorted((k, v) for k, v in headers if k not in PER_ANSWER | {"connection"})

    assert same(plain[1]) == same(closing[1]) == same(old[1])
    ids = [dict(headers)["x-request-id"] for _status, headers, _body in (plain, closing, old)]
    assert len(set(ids)) == 3  # each answer its own id, the one-buffer one too
    assert [v for k, v in plain[1] if k == "x-dup"] == ["first", "second"]
    assert ("connection", "close") in closing[1] and "connection" not in dict(plain[1])
