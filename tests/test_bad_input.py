"""Odd ids, encodings and headers: a 4xx or an uncached pass-through, never a 500,
never a key outside the namespace, never one patient's data under another's key.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest
from redis.asyncio import Redis

from tests.conftest import TOKEN_A, Stack, StackFactory

ODD_IDS = [
    "042", "%34%32", "42%0A", "42:x", "*", "%EF%BC%94%EF%BC%92", "%D9%A4%D9%A2", "4" * 5000,
    "4_2", "+42", "-42", "0", "%2042", "42%2F..%2F43", "..%2F43", "42/../43", "42;x", "42%00",
    "42.0",
    "%2e%2e", "42%3A43", "1234567890123456789",
]


@pytest.mark.parametrize("odd", ODD_IDS, ids=lambda s: s[:20])
async def test_odd_ids_never_create_keys(stack: Stack, redis_client: Redis, odd: str) -> None:
    reply = await stack.proxy.get("/api/v1/patients/" + odd)
    assert reply.status < 500 or reply.status in (502, 504)
    assert reply.x_cache == "BYPASS"
    assert await redis_client.keys("*") == []


async def test_cached_id_is_never_served_for_another_spelling(
    stack: Stack, redis_client: Redis
) -> None:
    await stack.proxy.get("/api/v1/patients/42")
    await stack.proxy.get("/api/v1/patients/43")
    for spelling in ("042", "%34%32", "43%2F..%2F42"):
        reply = await stack.proxy.get("/api/v1/patients/" + spelling)
        assert reply.x_cache == "BYPASS"
    assert sorted(await redis_client.keys("*")) == [b"identity:patient:42",
                                                   b"identity:patient:43"]
    hit = await stack.proxy.get("/api/v1/patients/43")
    assert hit.json()["id"] == "43"


async def test_dot_segments_and_double_slashes_pass_through(
    stack: Stack, redis_client: Redis
) -> None:
    for path in ("/api/v1/patients/./42", "/api/v1/x/../patients/42",
                 "//api/v1/patients/42", "/api/v1/patients//42", "/API/v1/patients/42"):
        reply = await stack.proxy.get(path)
        assert reply.x_cache == "BYPASS", path
    assert await redis_client.keys("*") == []


async def test_oversized_header_is_a_4xx(stack: Stack) -> None:
    reply = await stack.proxy.get("/api/v1/patients/42", headers={"X-Big": "a" * 20000})
    assert 400 <= reply.status < 500


async def test_garbage_request_line_is_a_4xx(stack: Stack) -> None:
    host, port = stack.proxy.base.removeprefix("http://").split(":")
    for raw in (b"GET /api/v1/patients/42 HTTP/1.1\r\nHost: x\r\nAccept-Encoding: \xff\xfe\r\n\r\n",
                b"GET /api/v1/patients/\xef\xbc\x94\xef\xbc\x92 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /api/v1/patients/42 HTTP/1.1\r\nHost: x\r\nCookie: \x7f\r\n\r\n",
                b"GET http://evil/api/v1/patients/42 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"BREW /api/v1/patients/42 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /api/v1/patients/4\x002 HTTP/1.1\r\nHost: x\r\n\r\n"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        status = int(status_line.split()[1])
        assert status < 500 or status in (502, 504), (raw, status_line)


async def test_odd_credentials_and_encodings_do_not_break_requests(stack: Stack) -> None:
    for headers in ({"Accept-Encoding": "gzip;q=abc, *;q=-1"}, {"Cookie": "=;=;"},
                    {"Accept-Encoding": ";;;,,"}, {"Authorization": TOKEN_A + " " * 2000}):
        reply = await stack.proxy.get("/api/v1/patients/42", headers=headers)
        assert reply.status < 500


MALFORMED = {
    "bad-request-line": b"GET /api/v1/patients/42 HTTP/1.1 x\r\nHost: x\r\n\r\n",
    "bad-header": b"GET /api/v1/patients/42 HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
    "too-large": b"GET /api/v1/patients/" + b"4" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}


async def test_malformed_requests_are_counted_by_kind_and_logged_once(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await make_stack({"SIDECAR_WARN_INTERVAL_S": "3600"})
    host, port = stack.proxy.base.removeprefix("http://").split(":")
    kinds = [kind for kind in MALFORMED for _ in range(17)][:50]
    with caplog.at_level(logging.DEBUG):
        for kind in kinds:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(MALFORMED[kind])
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            assert status_line.split()[1] == b"400", (kind, status_line)
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "malformed request" in lines[0].getMessage()
    assert "4444" not in caplog.text and "Bad Name" not in caplog.text  # no raw request bytes
    metrics = (await stack.admin.get("/metrics", token=None)).body.decode()
    counted = {kind: metrics.count(f'sidecar_bad_requests_total{{kind="{kind}"}} {n}.0')
               for kind, n in Counter(kinds).items()}
    assert counted == {"bad-request-line": 1, "bad-header": 1, "too-large": 1}, metrics
    assert 'sidecar_bad_requests_total{kind="other"} 0.0' in metrics
