"""RFC 5861: stale-while-revalidate and stale-if-error, bounded by max_stale."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from tests.conftest import Stack, StackFactory
from tests.waiting import within

PATIENT = "/api/v1/patients/42"


def _advance(stack: Stack, seconds: float) -> None:
    clock = stack.rt.clock
    stack.rt.set_clock(lambda: clock() + seconds)


async def test_stale_while_revalidate_serves_at_once_and_refreshes_once(
    stack: Stack, redis_client: Redis
) -> None:
    await stack.proxy.get(PATIENT)
    _advance(stack, 600 + 10)  # 10 s into the 30 s window
    first = await stack.proxy.get(PATIENT)
    assert first.x_cache == "STALE" and "fwd=stale" in first.headers["Cache-Status"]
    assert int(first.headers["Age"]) >= 610
    replies = await asyncio.gather(*[stack.proxy.get(PATIENT) for _ in range(10)])
    assert {r.x_cache for r in replies} <= {"STALE", "HIT"}  # HIT once the refresh landed
    await stack.rt.flights.idle()
    assert stack.upstream_hits(PATIENT) == 2  # the first miss and one refresh
    fresh = await stack.proxy.get(PATIENT)
    assert fresh.x_cache == "HIT" and fresh.headers["Age"] == "0"


async def test_past_the_revalidate_window_is_a_miss(stack: Stack) -> None:
    await stack.proxy.get(PATIENT)
    _advance(stack, 600 + 31)
    assert (await stack.proxy.get(PATIENT)).x_cache == "MISS"


async def test_stale_if_error_on_upstream_5xx(stack: Stack) -> None:
    first = await stack.proxy.get(PATIENT)
    _advance(stack, 600 + 120)
    reply = await stack.proxy.get(PATIENT, headers={"X-Stub-Status": "503"})
    assert reply.status == 200 and reply.x_cache == "STALE"
    assert reply.body == first.body
    assert "detail=upstream-error" in reply.headers["Cache-Status"]
    metrics = (await stack.admin.get("/metrics", token=None)).body.decode()
    assert 'cache_stale_served_total{key_prefix="identity:patient",reason="error"} 1.0' in metrics


async def test_stale_if_error_when_upstream_is_down_or_slow(
    stack: Stack, stub_server: TestServer
) -> None:
    first = await stack.proxy.get(PATIENT)
    _advance(stack, 600 + 120)
    slow = await stack.proxy.get(PATIENT, headers={"X-Stub-Delay-Ms": "100"})
    assert slow.x_cache == "MISS"  # answered: not an error, and it refreshed the entry
    _advance(stack, 600 + 120)
    await stub_server.close()
    down = await stack.proxy.get(PATIENT)
    assert down.status == 200 and down.x_cache == "STALE" and down.body == first.body


async def test_stale_if_error_when_upstream_times_out(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    # 1 s: a busy machine's normal answer (the first request) still arrives in time.
    stack = await make_stack({"UPSTREAM_READ_TIMEOUT_S": "1"})
    first = await stack.proxy.get(PATIENT)
    _advance(stack, 600 + 120)
    reply = await stack.proxy.get(PATIENT, headers={"X-Stub-Delay-Ms": "3000"})
    assert reply.status == 200 and reply.x_cache == "STALE" and reply.body == first.body


async def test_drain_cancels_background_refreshes(stack: Stack, redis_client: Redis) -> None:
    await stack.proxy.get(PATIENT)
    _advance(stack, 600 + 10)
    stale = await stack.proxy.get(PATIENT, headers={"X-Stub-Delay-Ms": "5000"})
    assert stale.x_cache == "STALE" and len(stack.rt.flights) == 1
    # A refresh that ran on instead of being cancelled would be seen below (a HIT).
    await within(stack.rt.flights.cancel_background(), "background refresh cancelled")
    assert len(stack.rt.flights) == 0
    assert (await stack.proxy.get(PATIENT)).x_cache == "STALE"  # nothing was refreshed


async def test_past_max_stale_the_error_is_shown(stack: Stack) -> None:
    await stack.proxy.get(PATIENT)
    _advance(stack, 600 + 901)
    reply = await stack.proxy.get(PATIENT, headers={"X-Stub-Status": "503"})
    assert reply.status == 503 and reply.x_cache == "MISS"
