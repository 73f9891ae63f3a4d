"""Writes erase what they change (RFC 9111 §4.4), and purge on the admin port."""

from __future__ import annotations

import json
import logging

import pytest
from redis.asyncio import Redis

from tests.conftest import REDIS_FAULT_BUDGETS, Stack, StackFactory
from tests.waiting import within

PATIENT = "/api/v1/patients/42"
DASHBOARD = "/api/v1/statistics/dashboard"


async def _prime(stack: Stack, *paths: str) -> None:
    for path in paths:
        await stack.proxy.get(path)
        assert (await stack.proxy.get(path)).x_cache == "HIT"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_write_erases_every_variant_and_the_dashboard(
    stack: Stack, redis_client: Redis, method: str
) -> None:
    await _prime(stack, PATIENT, DASHBOARD)
    await stack.proxy.get(PATIENT, headers={"Accept-Encoding": "gzip"})
    assert await redis_client.hlen("identity:patient:42") == 2
    body = json.dumps({"gender": "female"}).encode()
    reply = await stack.proxy.request(method, PATIENT, data=body,
                                      headers={"Content-Type": "application/json"})
    assert 200 <= reply.status < 300
    assert await redis_client.exists("identity:patient:42", "identity:stats:dashboard") == 0
    after = await stack.proxy.get(PATIENT)
    assert after.x_cache == "MISS"
    metrics = (await stack.admin.get("/metrics", token=None)).body.decode()
    assert 'cache_invalidations_total{kind="write"} 2.0' in metrics
    if method != "DELETE":
        assert after.json()["meta"]["versionId"] == 2
    else:
        assert after.status == 404


async def test_write_through_an_odd_spelling_still_erases_the_entity(
    stack: Stack, redis_client: Redis
) -> None:
    await _prime(stack, PATIENT)
    reply = await stack.proxy.request("PATCH", "/api/v1/patients/042",
                                      data=b'{"gender": "other"}',
                                      headers={"Content-Type": "application/json"})
    assert reply.status == 200
    fresh = await stack.proxy.get(PATIENT)
    assert fresh.x_cache == "MISS" and fresh.json()["gender"] == "other"


async def test_create_invalidates_the_dashboard_only(stack: Stack, redis_client: Redis) -> None:
    await _prime(stack, PATIENT, DASHBOARD)
    reply = await stack.proxy.request("POST", "/api/v1/patients", data=b"{}",
                                      headers={"Content-Type": "application/json"})
    assert reply.status == 201
    assert await redis_client.exists("identity:stats:dashboard") == 0
    assert await redis_client.exists("identity:patient:42") == 1


async def test_failed_write_invalidates_nothing(stack: Stack, redis_client: Redis) -> None:
    await _prime(stack, PATIENT)
    reply = await stack.proxy.request("PUT", PATIENT, data=b"{}",
                                      headers={"X-Stub-Status": "409"})
    assert reply.status == 409
    assert (await stack.proxy.get(PATIENT)).x_cache == "HIT"


async def test_write_while_redis_is_down_is_applied_when_it_returns(
    make_stack: StackFactory, own_redis: object
) -> None:
    from tests.redis_process import RedisProcess
    assert isinstance(own_redis, RedisProcess)
    stack = await make_stack(
        {**REDIS_FAULT_BUDGETS, "REDIS_TIMEOUT_MS": "250", "REDIS_CONNECT_TIMEOUT_MS": "250"},
        redis_url=own_redis.url)
    assert stack.rt.invalidator is not None
    stack.rt.invalidator.retry_every = 0.05
    await _prime(stack, PATIENT)
    frozen = own_redis.freeze(3)  # well past the write's 0.5 s cache deadline
    reply = await stack.proxy.request("PATCH", PATIENT, data=b'{"gender": "other"}',
                                      headers={"Content-Type": "application/json"})
    assert reply.status == 200
    assert stack.rt.invalidator.pending("identity:patient:42")
    during = await stack.proxy.get(PATIENT)
    assert during.json()["gender"] == "other"  # pending key: never served from cache
    frozen.close()
    client = Redis.from_url(own_redis.url)
    try:
        async def applied() -> None:
            assert stack.rt.invalidator is not None
            while stack.rt.invalidator.pending("identity:patient:42"):
                await stack.rt.invalidator.wait_idle()
        await within(applied(), "deferred invalidation applied after the freeze")
        assert await client.exists("identity:patient:42") == 0
    finally:
        await client.aclose()
    assert (await stack.proxy.get(PATIENT)).json()["gender"] == "other"


# --- purge on the admin port -------------------------------------------------------


async def test_purge_needs_the_admin_token(make_stack: StackFactory, redis_client: Redis) -> None:
    stack = await make_stack({"SIDECAR_ADMIN_TOKEN": "s3cret"})
    await _prime(stack, PATIENT)
    denied = await stack.admin.request("DELETE", "/cache/identity:patient:42", token=None)
    wrong = await stack.admin.request("DELETE", "/cache/identity:patient:42",
                                      token="Bearer nope")
    assert denied.status == wrong.status == 401
    ok = await stack.admin.request("DELETE", "/cache/identity:patient:42",
                                   token="Bearer s3cret")
    assert ok.status == 200 and ok.json() == {"scope": "key", "removed": 1}
    assert await redis_client.exists("identity:patient:42") == 0
    metrics = (await stack.admin.get("/metrics", token=None)).body.decode()
    assert 'cache_purges_total{result="denied",scope="key"} 2.0' in metrics
    assert 'cache_purges_total{result="ok",scope="key"} 1.0' in metrics
    assert 'cache_invalidations_total{kind="purge"} 1.0' in metrics


async def test_purge_works_while_the_cache_is_rolled_back(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    on = await make_stack()
    await _prime(on, PATIENT)
    off = await make_stack({"CACHE_ENABLED": "false"})
    reply = await off.admin.request("DELETE", "/cache?prefix=identity:patient&confirm=yes",
                                    token=None)
    assert reply.status == 200 and reply.json()["removed"] == 1
    assert await redis_client.exists("identity:patient:42") == 0


async def test_purge_without_token_only_on_loopback(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    exposed = await make_stack({"SIDECAR_ADMIN_HOST": "0.0.0.0"})
    reply = await exposed.admin.request("DELETE", "/cache/identity:patient:42", token=None)
    assert reply.status == 403
    local = await make_stack({"SIDECAR_ADMIN_HOST": "127.0.0.1"})
    reply = await local.admin.request("DELETE", "/cache/identity:patient:42", token=None)
    assert reply.status == 200


@pytest.mark.parametrize("key", ["identity:patient:*", "identity:*", "other:patient:1",
                                 "identity:patient:4%2A", "identity:patient:[1-9]"])
async def test_purge_refuses_globs_and_foreign_keys(
    make_stack: StackFactory, redis_client: Redis, key: str
) -> None:
    stack = await make_stack()
    await _prime(stack, PATIENT)
    reply = await stack.admin.request("DELETE", "/cache/" + key, token=None)
    assert reply.status in (400, 404)
    assert await redis_client.exists("identity:patient:42") == 1


async def test_bulk_purge_needs_confirmation_and_a_known_prefix(
    stack: Stack, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await _prime(stack, PATIENT, "/api/v1/patients/43", DASHBOARD)
    unconfirmed = await stack.admin.request("DELETE", "/cache?prefix=identity:patient",
                                            token=None)
    assert unconfirmed.status == 400
    unknown = await stack.admin.request("DELETE", "/cache?prefix=identity&confirm=yes",
                                        token=None)
    assert unknown.status == 400
    with caplog.at_level(logging.INFO, logger="sidecar.audit"):
        ok = await stack.admin.request(
            "DELETE", "/cache?prefix=identity:patient&confirm=yes", token=None)
    assert ok.json() == {"scope": "prefix", "removed": 2}
    assert await redis_client.keys("*") == [b"identity:stats:dashboard"]
    audit = [r.__dict__ for r in caplog.records if r.name == "sidecar.audit"]
    assert audit[-1]["event"] == "cache_purge" and audit[-1]["removed"] == 2
    assert audit[-1]["who"] == "loopback"
