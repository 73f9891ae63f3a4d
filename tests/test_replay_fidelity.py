"""A hit looks like the miss that stored it (RFC 9111 §3.1): same headers, same Date.

Only `Age`, `X-Cache` and `Cache-Status` may differ.
"""

from __future__ import annotations

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
PER_ANSWER = {"age", "x-cache", "cache-status"}


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
