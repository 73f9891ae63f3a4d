"""Batched lookups against a real redis-server: every caller gets its own reply, a frozen
Redis fails every waiter within the deadline, and a cancelled caller harms no one."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from sidecar.read_batcher import ReadBatcher
from tests.redis_process import RedisProcess


async def test_concurrent_lookups_each_get_their_own_value(own_redis: RedisProcess) -> None:
    client = Redis.from_url(own_redis.url)
    try:
        for i in range(200):
            await client.hset(f"identity:patient:{i}", f"f{i}", f"v{i}")
        before = int(own_redis.info("stats")["total_commands_processed"])
        batcher = ReadBatcher(client, deadline=5.0)
        replies = await asyncio.gather(*[batcher.hget(f"identity:patient:{i}", f"f{i}")
                                         for i in range(200)])
        assert replies == [f"v{i}".encode() for i in range(200)]
        assert await batcher.hget("identity:patient:1", "other") is None
        processed = int(own_redis.info("stats")["total_commands_processed"]) - before
        assert processed <= 210  # one HGET each; no per-request extras
        await batcher.close()
    finally:
        await client.aclose()


async def test_a_frozen_redis_fails_every_waiter_within_the_deadline(
    own_redis: RedisProcess
) -> None:
    client = Redis.from_url(own_redis.url, socket_timeout=None)
    try:
        await client.hset("identity:patient:1", "f", "v")
        batcher = ReadBatcher(client, deadline=0.3)
        frozen = own_redis.freeze(3)
        try:
            start = time.monotonic()
            results = await asyncio.gather(*[batcher.hget("identity:patient:1", "f")
                                             for _ in range(20)], return_exceptions=True)
            elapsed = time.monotonic() - start
        finally:
            frozen.close()
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert elapsed < 2.5  # the freeze lasts 3 s; the batch's deadline is 0.3 s
        await batcher.close()
    finally:
        await client.aclose()


async def test_a_cancelled_caller_does_not_disturb_its_batch(own_redis: RedisProcess) -> None:
    client = Redis.from_url(own_redis.url)
    try:
        for i in range(10):
            await client.hset(f"identity:patient:{i}", "f", f"v{i}")
        batcher = ReadBatcher(client, deadline=5.0)
        futures = [batcher.hget(f"identity:patient:{i}", "f") for i in range(10)]
        futures[3].cancel()  # a client that went away
        replies = await asyncio.gather(*futures, return_exceptions=True)
        assert isinstance(replies[3], asyncio.CancelledError)
        assert [r for i, r in enumerate(replies) if i != 3] == [
            f"v{i}".encode() for i in range(10) if i != 3]
        # The connection is still in step: the next lookup reads its own value.
        assert await batcher.hget("identity:patient:7", "f") == b"v7"
        await batcher.close()
    finally:
        await client.aclose()
