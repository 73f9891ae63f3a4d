"""Redis backend via `redis.asyncio` + hiredis, configured for a proxy, not a batch job.

redis-py's defaults (seconds-long socket timeouts, a Retry of several attempts, a pool
that raises when full) would stall requests when Redis hangs; here every knob is short
and there is no retry: the caller falls back to the upstream instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from sidecar.read_batcher import ReadBatcher
from sidecar.settings import Settings

_SCAN_BATCH = 500


def _no_maint_notifications() -> MaintNotificationsConfig:
    """redis-py 8.1 otherwise sends `CLIENT MAINT_NOTIFICATIONS` on every new RESP3
    connection ("auto"); servers without it (Redis 7.0) reject it: a wasted round trip and
    a DEBUG line per connection, for a feature of managed Redis offerings we do not use.
    """
    return MaintNotificationsConfig(enabled=False)


class RedisStore:
    name = "redis"
    self_timed_reads = True  # get() enforces the deadline itself (see read_batcher.py)

    def __init__(self, settings: Settings, *, ssl_options: dict[str, Any] | None = None) -> None:
        self._settings = settings
        self._ssl: dict[str, Any] = ssl_options or {}
        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_timeout,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_connect_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            # No CLIENT SETINFO on connect: two round trips fewer on every reconnect, and
            # one command fewer the ACL user needs.
            driver_info=None,
            maint_notifications_config=_no_maint_notifications(),
            **(ssl_options or {}),
        )
        self.client: Redis = Redis(connection_pool=pool)
        # Lookups are batched per loop turn and carry their own deadline (the guard's own
        # timer would be a second one per request).
        self._reads = ReadBatcher(
            self.client, settings.redis_timeout + settings.redis_connect_timeout)

    def subscriber(self) -> Redis:
        """A client for one long-lived pub/sub connection: no read timeout, no retry."""
        return Redis.from_url(
            self._settings.redis_url, socket_connect_timeout=self._settings.redis_connect_timeout,
            socket_timeout=None, retry=Retry(NoBackoff(), 0), driver_info=None,
            maint_notifications_config=_no_maint_notifications(), **self._ssl)

    async def get(self, key: str, field: str) -> bytes | None:
        value = await self._reads.hget(key, field)
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, field: str, value: bytes, keep: int,
                  after: Sequence[tuple[str | int, ...]] = ()) -> None:
        """`MULTI HSET EXPIRE [EVAL PUBLISH] EXEC`: one round trip, never a key without TTL."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, field, value)
            pipe.expire(key, keep)
            for command in after:
                pipe.execute_command(*command)
            await pipe.execute()

    async def drop_field(self, key: str, field: str) -> None:
        await self.client.hdel(key, field)

    async def delete(self, keys: list[str]) -> int:
        return int(await self.client.delete(*keys)) if keys else 0

    async def delete_prefix(self, prefix: str) -> int:
        """SCAN with a server-side pattern built from a validated prefix, never user globs."""
        removed = 0
        batch: list[str] = []
        async for key in self.client.scan_iter(match=f"{prefix}:*", count=_SCAN_BATCH):
            batch.append(key.decode() if isinstance(key, bytes) else str(key))
            if len(batch) >= _SCAN_BATCH:
                removed += int(await self.client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(await self.client.unlink(*batch))
        return removed

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self._reads.close()
        await self.client.aclose()
