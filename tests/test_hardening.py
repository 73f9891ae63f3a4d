"""Regressions from review: odd upstream headers, odd client bytes, writes racing reads."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from redis.asyncio import Redis

from tests.conftest import TOKEN_A, Stack, StackFactory
from tests.waiting import within

PATIENT = "/api/v1/patients/42"


async def test_absurd_upstream_age_neither_breaks_nor_poisons(
    stack: Stack, redis_client: Redis
) -> None:
    huge = {"X-Stub-Header": "Age: " + "9" * 400}
    first = await stack.proxy.get(PATIENT, headers=huge)
    assert first.status == 200 and "detail=too-old" in first.headers["Cache-Status"]
    second = await stack.proxy.get(PATIENT)  # RFC 9111 §1.2.2: read as 2**31, not stored
    assert second.status == 200 and second.x_cache == "MISS"
    third = await stack.proxy.get(PATIENT)
    assert third.x_cache == "HIT" and third.headers["Age"] == "0"


async def test_entry_older_than_its_ttl_upstream_is_not_stored(
    stack: Stack, redis_client: Redis
) -> None:
    reply = await stack.proxy.get(PATIENT, headers={"X-Stub-Header": "Age: 601"})
    assert reply.status == 200 and "detail=too-old" in reply.headers["Cache-Status"]
    assert await redis_client.exists("identity:patient:42") == 0


async def test_set_cookie_named_in_connection_is_still_not_stored(
    stack: Stack, redis_client: Redis
) -> None:
    hooks = [("X-Stub-Header", "Set-Cookie: a=b"), ("X-Stub-Header", "Connection: Set-Cookie")]
    url = stack.proxy.base + PATIENT
    async with stack.proxy.session.get(url, headers=[*hooks, ("Authorization", TOKEN_A)]) as r:
        assert r.status == 200 and "Set-Cookie" not in r.headers
    assert await redis_client.exists("identity:patient:42") == 0


async def test_undecodable_credential_bytes_are_not_a_500(stack: Stack) -> None:
    host, port = stack.proxy.base.removeprefix("http://").split(":")
    for raw in (b"GET /api/v1/patients/42 HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
                b"GET /api/v1/patients/42 HTTP/1.1\r\nHost: x\r\n"
                b"Cookie: s=\xc3\x28\r\nConnection: close\r\n\r\n"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        writer.close()
        assert status < 500


async def test_read_after_write_never_joins_an_older_fetch(stack: Stack) -> None:
    """A slow GET is in flight; a PUT lands; the next GET must see the write."""
    slow = asyncio.ensure_future(stack.proxy.get(PATIENT, headers={"X-Stub-Delay-Ms": "400"}))
    from upstream_stub.app import STATE
    await within(stack.stub[STATE].wait_for(f"GET {PATIENT}"), "the GET reaching the upstream")
    put = await stack.proxy.request("PATCH", PATIENT, data=b'{"gender": "other"}',
                                    headers={"Content-Type": "application/json"})
    assert put.status == 200
    after = await stack.proxy.get(PATIENT)
    assert after.json()["gender"] == "other" and after.json()["meta"]["versionId"] == 2
    old = await slow
    assert old.json()["meta"]["versionId"] == 1  # started before the write: fine
    assert (await stack.proxy.get(PATIENT)).json()["meta"]["versionId"] == 2


async def test_writes_through_other_spellings_invalidate(
    stack: Stack, redis_client: Redis
) -> None:
    for spelling in ("/api/v1/patient%73/42", "/api/v1/patients/42%C2%A0",
                     "/api/v1/patients/42.0"):
        await stack.proxy.get(PATIENT)
        assert await redis_client.exists("identity:patient:42") == 1
        await stack.proxy.request("PATCH", spelling, data=b"{}",
                                  headers={"Content-Type": "application/json"})
        assert await redis_client.exists("identity:patient:42") == 0, spelling


async def test_failed_write_that_may_have_committed_still_invalidates(
    stack: Stack, redis_client: Redis
) -> None:
    await stack.proxy.get(PATIENT)
    reply = await stack.proxy.request("PUT", PATIENT, data=b"{}",
                                      headers={"X-Stub-Status": "503"})
    assert reply.status == 503
    assert await redis_client.exists("identity:patient:42") == 0


async def test_refused_refresh_drops_the_callers_copy(stack: Stack, redis_client: Redis) -> None:
    await stack.proxy.get(PATIENT)
    refused = await stack.proxy.get(PATIENT, headers={"Cache-Control": "no-cache",
                                                      "X-Stub-Status": "401"})
    assert refused.status == 401
    assert (await stack.proxy.get(PATIENT)).x_cache == "MISS"


async def test_purge_of_a_key_with_extra_segments_is_refused(stack: Stack) -> None:
    reply = await stack.admin.request("DELETE", "/cache/identity:patient:4242:x", token=None)
    assert reply.status == 400


async def test_transfer_codings_other_than_chunked_are_refused(stack: Stack) -> None:
    host, port = stack.proxy.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n"
                 b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    assert status in (400, 501)


@pytest.mark.parametrize(("status", "headers"), [
    (100, [["Content-Type", "application/json"]]),
    (200, [["Content-Length", "99"]]),
    (200, [["Transfer-Encoding", "chunked"]]),
    (200, [["Bad Name", "x"]]),
    (200, [["X-Note", "a\r\nSet-Cookie: s=1"]]),
])
async def test_an_entry_altered_in_redis_is_a_miss_not_a_broken_answer(
    make_stack: StackFactory, redis_client: Redis, status: int, headers: list[list[str]]
) -> None:
    """Someone with write access to Redis (and no CACHE_ENCRYPTION_KEY) stores what no fill
    would: framing headers, a 1xx, a header that splits the answer."""
    stack = await make_stack({"CACHE_NEAR_MAX_BYTES": "0"})
    await stack.proxy.get(PATIENT)
    (field,) = await redis_client.hkeys("identity:patient:42")
    meta = json.dumps({"s": status, "h": [["Date", "Thu, 03 Dec 2026 16:00:00 GMT"], *headers],
                       "t": stack.rt.clock(), "ttl": 600, "a": 0}).encode()
    await redis_client.hset("identity:patient:42", field,
                            b"SC1" + struct.pack(">I", len(meta)) + meta + b'{"id":"42"}')
    async with asyncio.timeout(10):
        reply = await stack.proxy.get(PATIENT)
    assert reply.status == 200 and reply.x_cache == "MISS" and "Set-Cookie" not in reply.headers
