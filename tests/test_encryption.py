"""Encryption at rest: Redis never holds clear text, values are bound to their key."""

from __future__ import annotations

import base64
import os

import pytest
from redis.asyncio import Redis

from tests.conftest import StackFactory

PATIENT = "/api/v1/patients/42"


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def test_redis_holds_no_clear_text(make_stack: StackFactory, redis_client: Redis) -> None:
    stack = await make_stack({"CACHE_ENCRYPTION_KEY": _key()})
    miss = await stack.proxy.get(PATIENT)
    hit = await stack.proxy.get(PATIENT)
    assert hit.x_cache == "HIT" and hit.body == miss.body
    stored = await redis_client.hgetall("identity:patient:42")
    (value,) = stored.values()
    family = miss.json()["name"][0]["family"].encode()
    assert family not in value and b"Patient" not in value and b'"42"' not in value


@pytest.mark.parametrize("near", ["on", "off"])
async def test_value_copied_under_another_key_does_not_open(
    make_stack: StackFactory, redis_client: Redis, near: str
) -> None:
    """Off: every hit reads Redis, and the bytes already opened for 42 are remembered
    (lookup.Decoded); the same bytes under 43 must still be refused."""
    env = {"CACHE_ENCRYPTION_KEY": _key()} | ({"CACHE_NEAR_MAX_BYTES": "0"} if near == "off"
                                              else {})
    stack = await make_stack(env)
    await stack.proxy.get(PATIENT)
    assert (await stack.proxy.get(PATIENT)).x_cache == "HIT"
    (field, value), = (await redis_client.hgetall("identity:patient:42")).items()
    await redis_client.hset("identity:patient:43", field, value)
    reply = await stack.proxy.get("/api/v1/patients/43")
    assert reply.x_cache == "MISS" and reply.json()["id"] == "43"
    metrics = (await stack.admin.get("/metrics", token=None)).body.decode()
    assert "cache_decrypt_failures_total 1.0" in metrics


async def test_rotation_keeps_old_entries_readable(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    old, new = _key(), _key()
    before = await make_stack({"CACHE_ENCRYPTION_KEY": old})
    await before.proxy.get(PATIENT)
    after = await make_stack({"CACHE_ENCRYPTION_KEY": new, "CACHE_ENCRYPTION_KEY_PREVIOUS": old})
    assert (await after.proxy.get(PATIENT)).x_cache == "HIT"
    stranger = await make_stack({"CACHE_ENCRYPTION_KEY": _key()})
    assert (await stranger.proxy.get(PATIENT)).x_cache == "MISS"


async def test_encrypted_value_is_a_miss_without_the_key(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    sealed = await make_stack({"CACHE_ENCRYPTION_KEY": _key()})
    await sealed.proxy.get(PATIENT)
    plain = await make_stack()
    assert (await plain.proxy.get(PATIENT)).x_cache == "MISS"


async def test_corrupted_value_is_a_miss(make_stack: StackFactory, redis_client: Redis) -> None:
    stack = await make_stack({"CACHE_NEAR_MAX_BYTES": "0"})  # the value is damaged in Redis
    await stack.proxy.get(PATIENT)
    (field,) = await redis_client.hkeys("identity:patient:42")
    await redis_client.hset("identity:patient:42", field, b"SC1\x00\x00\xff\xffgarbage")
    reply = await stack.proxy.get(PATIENT)
    assert reply.status == 200 and reply.x_cache == "MISS" and reply.json()["id"] == "42"
    assert (await stack.proxy.get(PATIENT)).x_cache == "HIT"
