"""A stale entry with a validator is revalidated with a conditional GET (RFC 9111 §4.3).

The stub answers 304 while the record's ETag is unchanged, so the sidecar refreshes the
stored headers and lifetime and keeps the stored body.
"""

from __future__ import annotations

import asyncio
import base64
import os

import aiohttp
from redis.asyncio import Redis

from sidecar.coordination import RedisCoordinator
from tests.conftest import TOKEN_A, Stack, StackFactory
from tests.waiting import within

PATIENT = "/api/v1/patients/42"
PAST_THE_WINDOW = 600 + 31  # past stale-while-revalidate (30 s): a miss with a stale copy


def _advance(stack: Stack, seconds: float) -> None:
    clock = stack.rt.clock
    stack.rt.set_clock(lambda: clock() + seconds)


async def _revalidations(stack: Stack, result: str) -> float:
    text = (await stack.admin.get("/metrics", token=None)).body.decode()
    wanted = f'cache_revalidations_total{{key_prefix="identity:patient",result="{result}"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))


async def test_unchanged_record_is_refreshed_by_a_304_and_keeps_its_body(stack: Stack) -> None:
    miss = await stack.proxy.get(PATIENT)
    _advance(stack, PAST_THE_WINDOW)
    again = await stack.proxy.get(PATIENT)
    assert again.status == 200 and again.body == miss.body and again.x_cache == "MISS"
    assert "fwd=stale" in again.headers["Cache-Status"]
    assert "fwd-status=304" in again.headers["Cache-Status"]
    assert again.headers["ETag"] == miss.headers["ETag"]
    assert await _revalidations(stack, "304") == 1
    assert stack.upstream_hits(PATIENT) == 2
    hit = await stack.proxy.get(PATIENT)  # a fresh lifetime from the 304
    assert hit.x_cache == "HIT" and hit.headers["Age"] == "0" and hit.body == miss.body


async def test_changed_record_replaces_the_stale_one(stack: Stack) -> None:
    miss = await stack.proxy.get(PATIENT)
    async with aiohttp.ClientSession() as direct:  # behind the cache's back: no invalidation
        put = await direct.put(stack.stub_url + PATIENT, json={"gender": "other"},
                               headers={"Authorization": TOKEN_A})
        assert put.status == 200
    _advance(stack, PAST_THE_WINDOW)
    again = await stack.proxy.get(PATIENT)
    assert again.status == 200 and again.body != miss.body and again.json()["gender"] == "other"
    assert "fwd-status=200" in again.headers["Cache-Status"]
    assert await _revalidations(stack, "200") == 1 and await _revalidations(stack, "304") == 0
    assert (await stack.proxy.get(PATIENT)).body == again.body


async def test_background_revalidation_refreshes_without_the_body(stack: Stack) -> None:
    miss = await stack.proxy.get(PATIENT)
    _advance(stack, 600 + 10)  # inside stale-while-revalidate
    stale = await stack.proxy.get(PATIENT)
    assert stale.x_cache == "STALE" and stale.body == miss.body
    await stack.rt.flights.idle()
    assert await _revalidations(stack, "304") == 1
    hit = await stack.proxy.get(PATIENT)
    assert hit.x_cache == "HIT" and hit.headers["Age"] == "0" and hit.body == miss.body


async def test_the_callers_own_validator_gets_a_304_after_revalidation(stack: Stack) -> None:
    miss = await stack.proxy.get(PATIENT)
    _advance(stack, PAST_THE_WINDOW)
    reply = await stack.proxy.get(PATIENT, headers={"If-None-Match": miss.headers["ETag"]})
    assert reply.status == 304 and reply.body == b""
    assert await _revalidations(stack, "304") == 1


async def test_a_304_that_forbids_storing_drops_the_stored_copy(
    stack: Stack, redis_client: Redis
) -> None:
    miss = await stack.proxy.get(PATIENT)
    _advance(stack, PAST_THE_WINDOW)
    # The hook makes the stub's 304 carry a cookie: the refreshed response is not storable.
    reply = await stack.proxy.get(PATIENT, headers={"X-Stub-Header": "Set-Cookie: s=1"})
    assert reply.status == 200 and reply.body == miss.body
    assert "detail=set-cookie" in reply.headers["Cache-Status"]
    assert await redis_client.hgetall("identity:patient:42") == {}
    assert (await stack.proxy.get(PATIENT)).x_cache == "MISS"


async def test_revalidation_works_with_encryption(make_stack: StackFactory) -> None:
    stack = await make_stack({"CACHE_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode()})
    miss = await stack.proxy.get(PATIENT)
    _advance(stack, PAST_THE_WINDOW)
    again = await stack.proxy.get(PATIENT)
    assert again.body == miss.body and "fwd-status=304" in again.headers["Cache-Status"]
    hit = await stack.proxy.get(PATIENT)
    assert hit.x_cache == "HIT" and hit.body == miss.body


async def test_one_revalidation_across_replicas_through_the_lease(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    """Two sidecars, one expired copy, a burst on both: the lease lets one of them ask the
    service (a 304), and the other's callers wait for it and read the refreshed copy."""
    lease = {"CACHE_LEASE_S": "20", "CACHE_LEASE_WAIT_S": "20"}
    one, two = await make_stack(lease), await make_stack(lease)
    for s in (one, two):
        assert isinstance(s.rt.coordinator, RedisCoordinator)
        await within(s.rt.coordinator._subscribed.wait(), "coordinator subscribed")
    miss = await one.proxy.get(PATIENT)
    for s in (one, two):
        _advance(s, PAST_THE_WINDOW)
    replies = await asyncio.gather(*[s.proxy.get(PATIENT, headers={"X-Stub-Delay-Ms": "300"})
                                     for s in (one, two) for _ in range(10)])
    assert {r.status for r in replies} == {200} and {r.body for r in replies} == {miss.body}
    asked = await _revalidations(one, "304") + await _revalidations(two, "304")
    assert 1 <= asked <= 2 and await _revalidations(one, "200") + await _revalidations(
        two, "200") == 0
    assert one.upstream_hits(PATIENT) == 1 + asked  # the fill, then only the conditional GETs
    metrics = "".join([(await s.admin.get("/metrics", token=None)).body.decode()
                       for s in (one, two)])
    assert 'scope="replica"' in metrics  # callers of one replica waited on the other's lease
