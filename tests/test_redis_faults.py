"""Redis killed, frozen or restarted: every request is still answered, fast, and caching
comes back by itself.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REDIS_FAULT_BUDGETS, Stack, StackFactory
from tests.redis_process import RedisProcess

PATIENT = "/api/v1/patients/42"
# What "fast" means while Redis is dead or frozen: far above the 100 ms budgets plus a busy
# machine, far below the seconds a stalled redis-py (5 s socket timeout, 10 retries) takes.
FAST = 2.5


async def _until_hit(stack_get: object, path: str, within: float) -> float:
    """Request until a HIT comes back; returns how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        reply = await stack_get(path)  # type: ignore[operator]
        assert reply.status == 200
        if reply.x_cache == "HIT":
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"caching did not resume within {within}s")


async def test_redis_killed_then_restarted(
    make_stack: StackFactory, own_redis: RedisProcess
) -> None:
    # Connections are refused at once: no short timeout needed, only the breaker's threshold.
    stack = await make_stack({"CACHE_BREAKER_FAILURES": "5", "CACHE_NEAR_MAX_BYTES": "0"},
                             redis_url=own_redis.url)
    assert (await stack.proxy.get(PATIENT)).x_cache == "MISS"
    assert (await stack.proxy.get(PATIENT)).x_cache == "HIT"
    assert await _backend_up(stack) == 1
    own_redis.kill()
    for _ in range(20):
        start = time.monotonic()
        reply = await stack.proxy.get(PATIENT)
        assert reply.status == 200 and reply.json()["id"] == "42"
        assert reply.x_cache == "MISS"
        assert time.monotonic() - start < FAST
    metrics = (await stack.admin.get("/metrics", token=None)).body.decode()
    assert 'cache_errors_total{operation="get",reason="breaker-open"}' in metrics
    assert "cache_breaker_open 1.0" in metrics
    assert await _backend_up(stack) == 0
    assert (await stack.admin.get("/readyz", token=None)).status == 200
    own_redis.start()
    await _until_hit(stack.proxy.get, PATIENT, within=30)
    assert await _backend_up(stack) == 1


async def _backend_up(stack: Stack) -> float:
    text = (await stack.admin.get("/metrics", token=None)).body.decode()
    (value,) = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "cache_backend_up" and s.labels == {"backend": "redis"}]
    return value


async def test_redis_frozen_by_debug_sleep(
    make_stack: StackFactory, own_redis: RedisProcess
) -> None:
    stack = await make_stack(REDIS_FAULT_BUDGETS, redis_url=own_redis.url)
    await stack.proxy.get(PATIENT)
    frozen = own_redis.freeze(2 * FAST)  # still frozen after the slowest allowed request
    try:
        for _ in range(10):
            start = time.monotonic()
            reply = await stack.proxy.get(PATIENT)
            assert reply.status == 200 and reply.json()["id"] == "42"
            assert time.monotonic() - start < FAST
    finally:
        frozen.close()
    await _until_hit(stack.proxy.get, PATIENT, within=30)


async def test_redis_unreachable_from_the_start(make_stack: StackFactory) -> None:
    from tests.redis_process import free_port
    stack = await make_stack(REDIS_FAULT_BUDGETS,
                             redis_url=f"redis://127.0.0.1:{free_port()}/0")
    start = time.monotonic()
    for path in (PATIENT, "/api/v1/professionals/1", "/api/v1/statistics/dashboard"):
        reply = await stack.proxy.get(path)
        assert reply.status == 200 and reply.x_cache == "MISS"
    assert time.monotonic() - start < FAST
