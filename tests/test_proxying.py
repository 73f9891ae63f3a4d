"""Pass-through: everything the cache does not answer reaches the upstream untouched."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from redis.asyncio import Redis
from yarl import URL

from tests.conftest import Stack, StackFactory

PATIENT = "/api/v1/patients/42"


async def test_large_binary_post_is_streamed_byte_for_byte(stack: Stack) -> None:
    body = os.urandom(5 * 1024 * 1024 + 7)
    reply = await stack.proxy.request("POST", "/api/v1/echo", token=None, data=body)
    assert reply.status == 200 and reply.x_cache == "BYPASS"
    assert reply.body == body
    assert reply.headers["X-Body-Sha256"] == hashlib.sha256(body).hexdigest()
    assert reply.headers["X-Received-Content-Length"] == str(len(body))


async def test_chunked_upload_stays_chunked(stack: Stack) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 10000

    reply = await stack.proxy.request("PUT", "/api/v1/echo", token=None, data=chunks())
    assert reply.body == b"x" * 40000
    assert reply.headers["X-Received-Transfer-Encoding"] == "chunked"


async def test_query_string_is_forwarded_byte_for_byte(stack: Stack) -> None:
    query = "?b=%2F%2f&a=1&a=2&c=%E2%82%AC&d=+&e"
    url = stack.proxy.base + "/api/v1/echo/headers" + query
    async with aiohttp.ClientSession() as s, s.get(URL(url, encoded=True)) as r:
        data = await r.json()
        assert r.headers["X-Cache"] == "BYPASS"
    assert data["raw_path"] == "/api/v1/echo/headers" + query


async def test_query_on_a_cached_route_passes_through_uncached(
    stack: Stack, redis_client: Redis
) -> None:
    reply = await stack.proxy.get(PATIENT + "?fields=name")
    assert reply.x_cache == "BYPASS" and "detail=query" in reply.headers["Cache-Status"]
    assert await redis_client.exists("identity:patient:42") == 0


async def test_allow_listed_query_parameters_become_variants(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    rules = """
service: identity
rules:
  - name: echo
    path: /api/v1/echo/headers
    key: identity:echo:headers
    query: [lang]
    ttl: 60
"""
    stack = await make_stack(rules_yaml=rules)
    fr = await stack.proxy.get("/api/v1/echo/headers?lang=fr", token=None)
    en = await stack.proxy.get("/api/v1/echo/headers?lang=en", token=None)
    fr2 = await stack.proxy.get("/api/v1/echo/headers?lang=fr", token=None)
    assert (fr.x_cache, en.x_cache, fr2.x_cache) == ("MISS", "MISS", "HIT")
    assert fr2.json()["raw_path"].endswith("?lang=fr")
    other = await stack.proxy.get("/api/v1/echo/headers?lang=fr&x=1", token=None)
    assert other.x_cache == "BYPASS"
    assert await redis_client.hlen("identity:echo:headers") == 2


async def test_hop_by_hop_headers_are_stripped_and_forwarded_for_appended(stack: Stack) -> None:
    reply = await stack.proxy.get("/api/v1/echo/headers", token=None, headers={
        "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "Keep-Alive": "5",
        "Proxy-Authorization": "Basic abc", "TE": "trailers", "Trailer": "X-T",
        "Upgrade": "h2c", "X-Forwarded-For": "10.0.0.1", "X-End-To-End": "kept",
    })
    names = {name.lower(): value for name, value in reply.json()["headers"]}
    for hop in ("x-secret-hop", "keep-alive", "proxy-authorization", "te", "trailer",
                "upgrade"):
        assert hop not in names
    assert names["x-end-to-end"] == "kept"
    assert names["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"


async def test_hop_by_hop_response_headers_are_stripped(stack: Stack) -> None:
    hooks = [("X-Stub-Header", "Connection: X-Internal"), ("X-Stub-Header", "X-Internal: 1"),
             ("X-Stub-Header", "Keep-Alive: timeout=5"), ("X-Stub-Header", "X-Kept: 1"),
             ("Authorization", "Bearer token-alice")]
    async with stack.proxy.session.get(stack.proxy.base + PATIENT, headers=hooks) as r:
        assert r.headers["X-Kept"] == "1"  # the hook works: end-to-end headers arrive
        assert "X-Internal" not in r.headers and "Keep-Alive" not in r.headers


async def test_redirects_and_cookies_are_relayed_not_followed(stack: Stack) -> None:
    reply = await stack.proxy.get("/api/v1/redirect", token=None)
    assert reply.status == 302
    assert reply.headers["Location"].endswith("/api/v1/echo/headers")
    assert reply.headers["Set-Cookie"].startswith("session=abc")
    echo = await stack.proxy.get("/api/v1/echo/headers", token=None)
    assert not any(n.lower() == "cookie" for n, _ in echo.json()["headers"])


async def test_no_accept_encoding_is_invented(stack: Stack) -> None:
    echo = await stack.proxy.get("/api/v1/echo/headers", token=None)
    names = {n.lower() for n, _ in echo.json()["headers"]}
    assert "accept-encoding" not in names and "user-agent" not in names


async def test_writes_are_forwarded_with_status_and_body(stack: Stack) -> None:
    created = await stack.proxy.request("POST", "/api/v1/patients",
                                        data=b'{"name": [{"family": "Diallo"}]}',
                                        headers={"Content-Type": "application/json"})
    assert created.status == 201 and created.x_cache == "BYPASS"
    gone = await stack.proxy.request("DELETE", "/api/v1/patients/5")
    assert gone.status == 204 and gone.body == b""


async def test_upstream_down_is_a_short_502(make_stack: StackFactory, redis_client: Redis) -> None:
    from tests.redis_process import free_port
    stack = await make_stack({"UPSTREAM_URL": f"http://127.0.0.1:{free_port()}"})
    for path in (PATIENT, "/api/v1/other"):
        reply = await stack.proxy.get(path)
        assert reply.status == 502
        assert reply.json() == {"error": "upstream_unavailable", "status": 502,
                                "message": "The identity service could not be reached."}
        assert b"Traceback" not in reply.body


async def test_upstream_timeout_is_a_504(make_stack: StackFactory, redis_client: Redis) -> None:
    stack = await make_stack({"UPSTREAM_READ_TIMEOUT_S": "1"})
    reply = await stack.proxy.get("/api/v1/slow?ms=3000", token=None)
    assert reply.status == 504 and reply.json()["error"] == "upstream_timeout"
    cached_route = await stack.proxy.get(PATIENT, headers={"X-Stub-Delay-Ms": "3000"})
    assert cached_route.status == 504


async def test_streamed_response_cut_mid_body_reaches_client_as_cut(stack: Stack) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        await stack.proxy.get("/api/v1/stream?chunks=20&close_early=1", token=None)
    whole = await stack.proxy.get("/api/v1/stream?chunks=20", token=None)
    assert len(whole.body) == 20 * 1024


async def test_expect_100_continue_is_answered_before_the_body(stack: Stack) -> None:
    """A client that waits for `100 Continue` before sending its body gets it (aiohttp's
    expect handler, on the app's path), then the upstream's answer with a request id."""
    host, port = URL(stack.proxy.base).host, URL(stack.proxy.base).port
    assert host is not None and port is not None
    body = b"x" * 1000
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"POST /api/v1/echo HTTP/1.1\r\nHost: sidecar\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 1000\r\nConnection: close\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        final = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, echoed = final.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and echoed == body
    assert b"\r\nX-Request-ID: " in head and b"\r\nX-Cache: BYPASS" in head


async def test_an_unknown_expectation_is_refused_with_417(stack: Stack) -> None:
    reply = await stack.proxy.get(PATIENT, headers={"Expect": "something-else"})
    assert reply.status == 417 and stack.upstream_hits(PATIENT) == 0
