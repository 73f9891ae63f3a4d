"""A copy the origin or a write has superseded is never served again (found by attack).

- the origin answers 404/410 or a 200 it forbids storing: the expired copy is erased, so
  neither stale-while-revalidate nor stale-if-error brings it back;
- a write or DELETE through the sidecar while a GET waits on a failing upstream: that GET
  does not fall back to the copy it read before the write;
- a 304 the sidecar cannot use still confirms the copy: the caller gets the stored body,
  never a bare 304 to a request without validators; an unconditional GET answered 304 is
  an upstream error;
- an `Age` too long to read counts as 2**31 (RFC 9111 §1.2.2), not as 0;
- a refresh that lands while an eviction message arrives still replaces the near tier's
  older copy;
- a header with control characters aiohttp cannot send is a 502, never stored.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from redis.asyncio import Redis

from sidecar.coordination import RedisCoordinator
from tests.conftest import TOKEN_A, Stack, StackFactory
from tests.test_odd_upstreams import raw_upstream
from tests.waiting import within
from upstream_stub.app import STATE

PATIENT = "/api/v1/patients/42"
PAST_SWR = 600 + 31  # past stale-while-revalidate (30 s), inside stale-if-error (900 s)


def _advance(stack: Stack, seconds: float) -> None:
    clock = stack.rt.clock
    stack.rt.set_clock(lambda: clock() + seconds)


async def _direct(stack: Stack, method: str, body: dict[str, str] | None = None) -> int:
    """A write that reaches the service without the sidecar (another service's)."""
    async with aiohttp.ClientSession() as direct, direct.request(
            method, stack.stub_url + PATIENT, json=body,
            headers={"Authorization": TOKEN_A}) as r:
        return r.status


async def _in_sync(stack: Stack) -> None:
    assert isinstance(stack.rt.coordinator, RedisCoordinator)
    await within(stack.rt.coordinator._subscribed.wait(), "near tier in sync")


async def test_an_erased_record_is_not_served_again_after_the_origin_said_404(
    stack: Stack, redis_client: Redis
) -> None:
    original = await stack.proxy.get(PATIENT)
    assert await _direct(stack, "DELETE") == 204
    _advance(stack, PAST_SWR)
    assert (await stack.proxy.get(PATIENT)).status == 404
    assert await redis_client.hgetall("identity:patient:42") == {}
    outage = await stack.proxy.get(PATIENT, headers={"X-Stub-Status": "503"})
    assert outage.status == 503 and outage.body != original.body


@pytest.mark.parametrize("forbids", ["Cache-Control: no-store", "Cache-Control: private",
                                     "Set-Cookie: s=1"])
async def test_a_newer_answer_that_may_not_be_stored_erases_the_older_copy(
    stack: Stack, redis_client: Redis, forbids: str
) -> None:
    old = await stack.proxy.get(PATIENT)
    assert await _direct(stack, "PUT", {"gender": "other"}) == 200
    _advance(stack, PAST_SWR)
    new = await stack.proxy.get(PATIENT, headers={"X-Stub-Header": forbids})
    assert new.json()["gender"] == "other"
    outage = await stack.proxy.get(PATIENT, headers={"X-Stub-Status": "503"})
    assert outage.status == 503 and outage.body != old.body


async def test_a_delete_through_the_sidecar_stops_stale_if_error_for_a_waiting_get(
    stack: Stack, redis_client: Redis
) -> None:
    old = await stack.proxy.get(PATIENT)
    _advance(stack, PAST_SWR)
    slow = asyncio.ensure_future(stack.proxy.get(
        PATIENT, headers={"X-Stub-Delay-Ms": "400", "X-Stub-Status": "503"}))
    await stack.stub[STATE].wait_for(f"GET {PATIENT}", count=2)  # the GET is upstream
    assert (await stack.proxy.request("DELETE", PATIENT)).status == 204
    racing = await slow
    assert racing.status == 503 and racing.body != old.body


async def test_an_unusable_304_still_answers_with_the_stored_body(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    answers = iter([
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: "v1"\r\n'
        b'Content-Length: 11\r\n\r\n{"id":"42"}',
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nX-B: \xff\r\n\r\n',  # not UTF-8
    ])

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(next(answers))
        await writer.drain()

    async with raw_upstream(serve) as (url, _):
        stack = await make_stack({"UPSTREAM_URL": url})
        await stack.proxy.get(PATIENT)
        _advance(stack, PAST_SWR)
        reply = await stack.proxy.get(PATIENT)  # the caller sent no validator
    assert reply.status == 200 and reply.body == b'{"id":"42"}'


async def test_a_304_to_an_unconditional_get_is_an_upstream_error(stack: Stack) -> None:
    reply = await stack.proxy.get(PATIENT, headers={"X-Stub-Status": "304"})
    assert reply.status == 502 and reply.x_cache == "MISS"


@pytest.mark.parametrize("age", ["9999999999", "99999999999", "0" * 30 + "700"])
async def test_an_age_too_long_to_read_is_too_old_not_fresh(stack: Stack, age: str) -> None:
    reply = await stack.proxy.get(PATIENT, headers={"X-Stub-Header": f"Age: {age}"})
    assert "detail=too-old" in reply.headers["Cache-Status"]


async def test_a_refresh_replaces_the_near_copy_even_when_an_eviction_lands_meanwhile(
    stack: Stack, redis_client: Redis
) -> None:
    await _in_sync(stack)
    await stack.proxy.get(PATIENT)
    assert await _direct(stack, "PUT", {"gender": "v2"}) == 200
    _advance(stack, 600 + 10)  # inside stale-while-revalidate
    stale = await stack.proxy.get(PATIENT, headers={"X-Stub-Delay-Ms": "300"})
    assert stale.x_cache == "STALE"
    await stack.stub[STATE].wait_for(f"GET {PATIENT}", count=2)  # the refresh is upstream
    await stack.proxy.request("PUT", "/api/v1/patients/43", data=b'{"gender":"x"}',
                              headers={"Content-Type": "application/json"})  # bumps the epoch
    await stack.rt.flights.idle()
    again = await stack.proxy.get(PATIENT)
    assert again.json()["gender"] == "v2"


async def test_a_refresh_is_kept_when_another_replica_fills_meanwhile(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    a, b = await make_stack(), await make_stack()
    for s in (a, b):
        await _in_sync(s)
    await a.proxy.get(PATIENT)
    _advance(a, PAST_SWR)
    slow = asyncio.ensure_future(a.proxy.get(PATIENT, headers={"X-Stub-Delay-Ms": "300"}))
    await a.stub[STATE].wait_for(f"GET {PATIENT}", count=2)
    await b.proxy.get("/api/v1/patients/43")  # a fill elsewhere: an eviction message here
    assert "fwd-status=304; stored" in (await slow).headers["Cache-Status"]
    assert (await a.proxy.get(PATIENT)).x_cache == "HIT"


async def test_a_header_aiohttp_cannot_send_is_a_502_and_never_stored(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    body = b'{"id":"42"}'

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"X-Note: a\x1b[2Jb\x0bc\x7f\r\nContent-Length: %d\r\n\r\n" % len(body)
                     + body)
        await writer.drain()

    async with raw_upstream(serve) as (url, _):
        stack = await make_stack({"UPSTREAM_URL": url})
        first = await stack.proxy.get(PATIENT)
        second = await stack.proxy.get(PATIENT)
        bypass = await stack.proxy.get("/api/v1/other")
    assert first.status == second.status == 502 and second.x_cache == "MISS"
    assert bypass.status == 502
    assert await redis_client.hgetall("identity:patient:42") == {}


async def test_a_copy_brought_back_after_its_erase_is_not_served(
    stack: Stack, redis_client: Redis
) -> None:
    """What a Sentinel or Cluster failover does when the master dies before its DEL reached
    the replica it promotes: the erased copy is back in Redis. Replayed here by putting the
    pre-write bytes back."""
    old = await stack.proxy.get(PATIENT)
    before = await redis_client.hgetall("identity:patient:42")
    put = await stack.proxy.request("PUT", PATIENT, data=b'{"gender": "other"}',
                                    headers={"Content-Type": "application/json"})
    assert put.status == 200
    for field, value in before.items():  # the failover
        await redis_client.hset("identity:patient:42", field, value)
    reply = await stack.proxy.get(PATIENT)
    assert reply.x_cache == "MISS" and reply.json()["gender"] == "other" != old.json()["gender"]
    assert (await stack.proxy.get(PATIENT)).x_cache == "HIT"  # the refill is served again
