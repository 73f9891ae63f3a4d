"""Range requests: one byte range of a stored 200 is a 206 from the cache (RFC 9110 §14);
anything else a Range can ask for goes to the service untouched. Real stub, real Redis."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from redis.asyncio import Redis

from tests.conftest import Stack, StackFactory
from tests.test_odd_upstreams import raw_upstream

PATIENT = "/api/v1/patients/42"


async def _stored(stack: Stack) -> bytes:
    first = await stack.proxy.get(PATIENT)
    assert first.x_cache == "MISS" and first.status == 200
    return first.body


async def test_one_range_of_a_stored_200_is_a_206_from_the_cache(stack: Stack) -> None:
    body = await _stored(stack)
    size = len(body)
    for asked, first, last in (("bytes=0-9", 0, 9), ("bytes=10-", 10, size - 1),
                               ("bytes=-5", size - 5, size - 1),
                               ("bytes=3-100000", 3, size - 1)):
        reply = await stack.proxy.get(PATIENT, headers={"Range": asked})
        assert reply.status == 206 and reply.x_cache == "HIT", asked
        assert reply.body == body[first:last + 1], asked
        assert reply.headers["Content-Range"] == f"bytes {first}-{last}/{size}", asked
        assert reply.headers["Content-Length"] == str(last - first + 1)
        assert reply.headers["ETag"] and "X-Request-ID" in reply.headers
    assert stack.upstream_hits(PATIENT) == 1


async def test_if_range_sends_the_range_only_for_the_stored_representation(
    stack: Stack
) -> None:
    body = await _stored(stack)
    etag = (await stack.proxy.get(PATIENT)).headers["ETag"]
    same = await stack.proxy.get(PATIENT, headers={"Range": "bytes=0-3", "If-Range": etag})
    assert same.status == 206 and same.body == body[:4]
    for other in ('"another"', "W/" + etag, "Mon, 01 Jan 2001 00:00:00 GMT"):
        whole = await stack.proxy.get(PATIENT, headers={"Range": "bytes=0-3", "If-Range": other})
        assert whole.status == 200 and whole.body == body and whole.x_cache == "HIT", other
    assert stack.upstream_hits(PATIENT) == 1


async def test_what_the_cache_does_not_answer_reaches_the_service(
    stack: Stack, redis_client: Redis
) -> None:
    ranged = await stack.proxy.get(PATIENT, headers={"Range": "bytes=0-10"})  # nothing stored
    assert ranged.x_cache == "BYPASS" and "detail=range" in ranged.headers["Cache-Status"]
    assert await redis_client.exists("identity:patient:42") == 0  # a Range fills nothing
    body = await _stored(stack)
    for asked in ("bytes=0-1,3-4", f"bytes={len(body)}-", "items=0-1", "bytes=5-1"):
        reply = await stack.proxy.get(PATIENT, headers={"Range": asked})
        assert reply.x_cache == "BYPASS", asked  # the stub ignores Range: a whole 200
        assert reply.status == 200 and reply.body == body, asked
    assert stack.upstream_hits(PATIENT) == 6
    fresh = await stack.proxy.get(PATIENT, headers={"Range": "bytes=0-1",
                                                    "Cache-Control": "no-cache"})
    assert fresh.x_cache == "BYPASS"  # a refresh with a Range: the service, untouched


async def test_a_matching_if_none_match_wins_over_the_range(stack: Stack) -> None:
    await _stored(stack)
    etag = (await stack.proxy.get(PATIENT)).headers["ETag"]
    reply = await stack.proxy.get(PATIENT, headers={"Range": "bytes=0-3",
                                                    "If-None-Match": etag})
    assert reply.status == 304 and reply.x_cache == "HIT"


async def test_head_ignores_the_range(stack: Stack) -> None:
    body = await _stored(stack)
    reply = await stack.proxy.request("HEAD", PATIENT, headers={"Range": "bytes=0-3"})
    assert reply.status == 200 and reply.x_cache == "HIT"
    assert reply.headers["Content-Length"] == str(len(body))


async def test_a_206_from_the_cache_is_audited(
    make_stack: StackFactory, redis_client: Redis, tmp_path: Path
) -> None:
    stack = await make_stack({"CACHE_AUDIT_LOG": str(tmp_path / "audit.log")})
    await _stored(stack)
    assert (await stack.proxy.get(PATIENT, headers={"Range": "bytes=0-3"})).status == 206
    (line,) = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert (line["outcome"], line["status"], line["key"]) == ("HIT", 206, "identity:patient:42")


async def test_a_head_with_a_range_fills_the_whole_representation(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    """HEAD ignores Range (RFC 9110 §14.2): its miss fetches, and stores, the whole 200
    from an upstream that would have honoured the Range."""
    body = b'{"id": 42, "name": "Alice Example"}'

    async def ranged(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if b"\r\nrange:" in heads[-1].lower():
            writer.write(b"HTTP/1.1 206 Partial Content\r\nContent-Type: application/json\r\n"
                         b"Content-Range: bytes 0-3/%d\r\nContent-Length: 4\r\n\r\n%s"
                         % (len(body), body[:4]))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async with raw_upstream(ranged) as (url, heads):
        stack = await make_stack({"UPSTREAM_URL": url})
        reply = await stack.proxy.request("HEAD", PATIENT, headers={"Range": "bytes=0-3"})
        assert reply.status == 200 and reply.headers["Content-Length"] == str(len(body))
        assert not any(b"\r\nrange:" in h.lower() for h in heads)
        assert await redis_client.exists("identity:patient:42") == 1
        hit = await stack.proxy.get(PATIENT)
        assert hit.x_cache == "HIT" and hit.body == body
