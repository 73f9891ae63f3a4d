"""Redis backend via `redis.asyncio` + hiredis, configured for a proxy, not a batch job.

redis-py's defaults (seconds-long socket timeouts, a Retry of several attempts, a pool
that raises when full) would stall requests when Redis hangs; here every knob is short
and there is no retry: the caller falls back to the upstream instead.

This is the standalone server (`redis://`, `rediss://`, `unix://`); `redis_ha.py` puts
Sentinel and Cluster behind the same class. Every redis-py exception is translated here
(`mapped`) into `CacheUnavailable`, so nothing above the seam imports one. A watcher pings
once a second: `up` (for /readyz and `cache_backend_up`) and one log line per topology change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AskError, NoPermissionError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeout
from redis.maint_notifications import MaintNotificationsConfig

from sidecar.errors import CacheTimeout, CacheUnavailable, ConfigError
from sidecar.read_batcher import ReadBatcher
from sidecar.settings import Settings, mask_url
from sidecar.store import Release, Subscription

log = logging.getLogger("sidecar.cache")
_SCAN_BATCH = 500
_PROBES = 16  # keys in 16 slots: all on one of 2+ masters is under 1 in 30,000
WATCH_INTERVAL = 1.0  # seconds between the watcher's pings
RELEASE_SCRIPT = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                  "return redis.call('del', KEYS[1]) else return 0 end")


@contextlib.contextmanager
def mapped() -> Iterator[None]:
    """The backend boundary: redis-py's (and the socket's) failures become ours."""
    try:
        yield
    except CacheUnavailable:
        raise
    except (RedisTimeout, TimeoutError) as exc:
        raise CacheTimeout(type(exc).__name__) from exc
    except (RedisError, RedisClusterException, OSError) as exc:
        raise CacheUnavailable(type(exc).__name__) from exc


def no_maint_notifications() -> MaintNotificationsConfig:
    """redis-py 8.1 otherwise sends `CLIENT MAINT_NOTIFICATIONS` on every new RESP3
    connection ("auto"); servers without it (Redis 7.0) reject it: a wasted round trip and
    a DEBUG line per connection, for a feature of managed Redis offerings we do not use.
    """
    return MaintNotificationsConfig(enabled=False)


def client_options(settings: Settings) -> dict[str, Any]:
    """Short budgets, no retry, no handshake extras: the same for every topology."""
    return {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        # No CLIENT SETINFO on connect: two round trips fewer on every reconnect, and
        # one command fewer the ACL user needs.
        "driver_info": None,
        "maint_notifications_config": no_maint_notifications(),
    }


class MappedPubSub:
    """A redis-py PubSub whose failures come out as `CacheUnavailable`."""

    def __init__(self, pubsub: PubSub, owner: Redis | None = None) -> None:
        self._pubsub = pubsub
        self._owner = owner  # a client made for this subscription alone: closed with it

    async def subscribe(self, *channels: str) -> None:
        with mapped():
            await self._pubsub.subscribe(*channels)

    async def get_message(self, wait: float) -> dict[str, Any] | None:
        with mapped():
            message: dict[str, Any] | None = await self._pubsub.get_message(timeout=wait)
            return message

    async def ping(self) -> None:
        with mapped():
            await self._pubsub.ping()

    async def aclose(self) -> None:
        with mapped():
            try:
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            finally:
                if self._owner is not None:
                    await self._owner.aclose()


class RedisStore:
    name = "redis"
    shared = True
    self_timed_reads = True  # get() enforces the deadline itself (see read_batcher.py)
    publish_in_transaction = True  # False on a cluster (see `put`)

    def __init__(self, settings: Settings, client: Any = None,
                 *, ssl_options: dict[str, Any] | None = None) -> None:
        self._settings = settings
        self._ssl: dict[str, Any] = ssl_options or {}
        if client is None:
            pool = BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=settings.redis_max_connections,
                timeout=settings.redis_timeout, **client_options(settings), **self._ssl)
            client = Redis(connection_pool=pool)
        self.client: Any = client  # Redis, or RedisCluster in `ClusterStore`
        self.deadline = settings.redis_timeout + settings.redis_connect_timeout
        # Lookups are batched per loop turn and carry their own deadline (the guard's own
        # timer would be a second one per request).
        self._reads = ReadBatcher(self.client, self.deadline)
        self._up = True  # optimistic until the watcher learns otherwise
        self._topology: str | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.on_health: Callable[[], None] | None = None  # set by the guard: gauges
        self.probe_prefix = "identity"  # the service: keys the ACL user may read
        self._probe_keys = True

    @property
    def up(self) -> bool:
        return self._up

    # --- the request path ------------------------------------------------------------------

    async def get(self, key: str, field: str) -> bytes | None:
        with mapped():
            value = await self._reads.hget(key, field)
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, field: str, value: bytes, keep: int,
                  release: Release | None = None) -> None:
        """`MULTI HSET EXPIRE [EVAL PUBLISH] EXEC`: one round trip, never a key without TTL.

        On a cluster the PUBLISH follows the EXEC: it has no slot, so it cannot sit in a
        transaction pinned to the entity's (where the hash-tagged lease is).
        """
        with mapped():
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(key, field, value)
                pipe.expire(key, keep)
                if release is not None:
                    pipe.eval(RELEASE_SCRIPT, 1, release.lease, release.token)
                    if self.publish_in_transaction:
                        pipe.publish(release.channel, release.message)
                await pipe.execute()
            if release is not None and not self.publish_in_transaction:
                await self.client.publish(release.channel, release.message)

    async def drop_field(self, key: str, field: str) -> None:
        with mapped():
            await self.client.hdel(key, field)

    async def delete(self, keys: list[str]) -> int:
        """On a cluster redis-py splits the DEL by slot (one per slot, all in parallel)."""
        with mapped():
            return int(await self.client.delete(*keys)) if keys else 0

    async def delete_prefix(self, prefix: str) -> int:
        with mapped():
            return await self._erase_scanned(self.client, prefix)

    async def _erase_scanned(self, node: Any, prefix: str, **target: Any) -> int:
        """SCAN one server with a pattern built from a validated prefix, never user globs."""
        removed = 0
        batch: list[str] = []
        cursor: int | str = 0
        while True:
            cursor, keys = await node.scan(cursor, match=f"{prefix}:*", count=_SCAN_BATCH,
                                           **target)
            if isinstance(cursor, dict):  # a cluster answers ({node name: cursor}, keys)
                [cursor] = cursor.values()
            batch.extend(k.decode() if isinstance(k, bytes) else str(k) for k in keys)
            if len(batch) >= _SCAN_BATCH or (batch and not int(cursor)):
                removed += int(await self.client.unlink(*batch))
                batch.clear()
            if not int(cursor):
                return removed

    # --- coordination ----------------------------------------------------------------------

    async def acquire(self, lease: str, token: str, ttl_ms: int) -> bool:
        with mapped():
            return bool(await self.client.set(lease, token, nx=True, px=ttl_ms))

    async def release(self, release: Release) -> None:
        with mapped():
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.eval(RELEASE_SCRIPT, 1, release.lease, release.token)
                pipe.publish(release.channel, release.message)
                await pipe.execute()

    async def publish(self, channel: str, message: str) -> None:
        with mapped():
            await self.client.publish(channel, message)

    def subscription(self) -> Subscription:
        """One long-lived pub/sub connection: no read timeout, no retry."""
        client = Redis.from_url(
            self._settings.redis_url, **{**client_options(self._settings),
                                         "socket_timeout": None}, **self._ssl)
        return MappedPubSub(client.pubsub(ignore_subscribe_messages=False), client)

    # --- health and topology ---------------------------------------------------------------

    async def start(self) -> None:
        """Refuse a cluster node behind `redis://`; then watch health and topology."""
        with contextlib.suppress(CacheUnavailable):  # Redis may come up after the sidecar
            self._topology = await self._check()
            log.info("cache backend topology: %s [backend=%s]", self._topology, self.name)
        self._watcher = asyncio.ensure_future(self._watch())

    async def _check(self) -> str:
        """Ping; the topology as one line (hosts and ports only, never a key's id).

        A cluster node behind `redis://` answers PING but redirects most keys (MOVED): a
        handful of probe keys in different slots tells, with nothing beyond the ACL user's
        HGET (INFO would need another permission).
        """
        try:
            with mapped():
                async with asyncio.timeout(self.deadline):
                    if not self._probe_keys:
                        await self.client.ping()
                        return "standalone"
                    async with self.client.pipeline(transaction=False) as pipe:
                        for n in range(_PROBES):
                            pipe.hget(f"{self.probe_prefix}:cluster-probe:{n}", "-")
                        await pipe.execute()
        except CacheUnavailable as exc:
            if isinstance(exc.__cause__, NoPermissionError):  # another key space: PING only
                self._probe_keys = False
                return await self._check()
            if not isinstance(exc.__cause__, AskError):  # MovedError is an AskError
                raise
            raise ConfigError([
                f"environment: REDIS_URL={mask_url(self._settings.redis_url)!r} points at a "
                "Redis Cluster node (it answers MOVED), where the cache could never work; "
                "use redis+cluster://host:port[,host:port...]"]) from None
        return "standalone"

    async def _watch(self) -> None:
        while True:
            try:
                topology = await self._check()
            except ConfigError as exc:  # Redis came up as a cluster node after we started
                log.error("cache backend misconfigured: %s", exc.problems[0])
                self._set_up(False)
                return
            except CacheUnavailable as exc:
                if self._up:
                    log.warning("cache backend down (%s): serving from upstream "
                                "[backend=%s]", exc, self.name)
                self._set_up(False)
            except Exception:  # a bug here must not end the watching (or the process)
                log.exception("cache backend watcher failed [backend=%s]", self.name)
            else:
                if topology != self._topology:
                    log.info("cache backend topology: %s [backend=%s]", topology, self.name)
                    self._topology = topology
                if not self._up:
                    log.info("cache backend up again [backend=%s]", self.name)
                self._set_up(True)
            await asyncio.sleep(WATCH_INTERVAL)

    def _set_up(self, value: bool) -> None:
        self._up = value
        if self.on_health is not None:
            self.on_health()

    async def ping(self) -> None:
        with mapped():
            await self.client.ping()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self._reads.close()
        with contextlib.suppress(CacheUnavailable), mapped():
            await self.client.aclose()
