"""Sentinel and Cluster behind the same `RedisStore`, with redis-py's own topology code.

- **Sentinel** (`redis+sentinel://`): `Sentinel.master_for` asks the Sentinels for the
  master on every new connection, so after a promotion the next connection goes to the new
  master; connections to the old one fail (or are refused as read-only) and are dropped.
- **Cluster** (`redis+cluster://`): `RedisCluster` discovers the slots from the seeds and
  re-reads them after a connection error or MOVED. Everything that must share a slot is
  hash-tagged (`store.lease_name`), so MULTI and EVAL touch one slot. A prefix purge SCANs
  every primary. Pub/sub is the classic, cluster-wide kind: a PUBLISH on any node reaches
  a SUBSCRIBE on any other, so one subscription per process hears every shard, and a
  reshard or a failover never moves a channel (sharded SSUBSCRIBE would need one
  connection per shard, re-made on each slot move, for a few messages per fill).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.sentinel import Sentinel

from sidecar.redis_store import RELEASE_SCRIPT, MappedPubSub, RedisStore, client_options, mapped
from sidecar.redis_url import RedisTarget
from sidecar.settings import Settings
from sidecar.store import Release, Subscription


def _auth(target: RedisTarget) -> dict[str, Any]:
    return {"username": target.username, "password": target.password}


class SentinelStore(RedisStore):
    name = "redis-sentinel"

    def __init__(self, settings: Settings, target: RedisTarget,
                 ssl_options: dict[str, Any]) -> None:
        options = client_options(settings)
        # The Sentinels get the same budgets and TLS, not the data nodes' ACL user.
        self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), sentinel_kwargs={**options, **ssl_options}, **options)
        self._service = target.service
        self._data_options: dict[str, Any] = {**_auth(target), "db": target.db, **ssl_options}
        client = self._sentinel.master_for(
            target.service, max_connections=settings.redis_max_connections,
            **self._data_options)
        super().__init__(settings, client, ssl_options=ssl_options)

    def subscription(self) -> Subscription:
        client = self._sentinel.master_for(self._service, socket_timeout=None,
                                           **self._data_options)
        return MappedPubSub(client.pubsub(ignore_subscribe_messages=False), client)

    async def _check(self) -> str:
        with mapped():
            async with asyncio.timeout(self.deadline * 3):  # Sentinels, then the master
                host, port = await self._sentinel.discover_master(self._service)
                await self.client.ping()
        return f"sentinel master {host}:{port}"

    async def close(self) -> None:
        await super().close()
        for sentinel in self._sentinel.sentinels:
            await sentinel.aclose()


class ClusterStore(RedisStore):
    name = "redis-cluster"
    publish_in_transaction = False

    def __init__(self, settings: Settings, target: RedisTarget,
                 ssl_options: dict[str, Any]) -> None:
        self._node_options = {**client_options(settings), **_auth(target), **ssl_options}
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            # A dead primary must not stop the slots the others serve.
            require_full_coverage=False,
            max_connections=settings.redis_max_connections, **self._node_options)
        self._seeds = target.nodes
        self._next = itertools.count()
        super().__init__(settings, client, ssl_options=ssl_options)

    async def release(self, release: Release) -> None:
        with mapped():
            await self.client.eval(RELEASE_SCRIPT, 1, release.lease, release.token)
            await self.client.publish(release.channel, release.message)

    async def delete_prefix(self, prefix: str) -> int:
        """SCAN every primary (each holds its own slots); the UNLINKs are split by slot."""
        with mapped():
            await self.client.initialize()  # a no-op unless a failure asked for fresh slots
            primaries = self.client.get_primaries()
            counts = await asyncio.gather(*(
                self._erase_scanned(self.client, prefix, target_nodes=node)
                for node in primaries))
            return sum(counts)

    def subscription(self) -> Subscription:
        """A plain connection to one primary (the next one on each reconnect)."""
        nodes = [(n.host, n.port) for n in self.client.get_primaries()] or list(self._seeds)
        host, port = nodes[next(self._next) % len(nodes)]
        client = Redis(host=host, port=port,
                       **{**self._node_options, "socket_timeout": None})
        return MappedPubSub(client.pubsub(ignore_subscribe_messages=False), client)

    async def _check(self) -> str:
        """Every primary answers; the topology line lists them (a failover changes it)."""
        with mapped():
            async with asyncio.timeout(self.deadline * 3):  # re-reading the slots first
                await self.client.initialize()
                await self.client.ping(target_nodes=RedisCluster.PRIMARIES)
                primaries = sorted(f"{n.host}:{n.port}" for n in self.client.get_primaries())
        return f"cluster primaries {','.join(primaries)}"


def build_redis_store(settings: Settings, target: RedisTarget,
                      ssl_options: dict[str, Any]) -> RedisStore:
    """The backend for `target.kind`; TLS options apply only to the rediss+ schemes."""
    tls = {**ssl_options, "ssl": True} if target.tls else {}
    if target.kind == "sentinel":
        return SentinelStore(settings, target, tls)
    if target.kind == "cluster":
        return ClusterStore(settings, target, tls)
    return RedisStore(settings, ssl_options=ssl_options if target.tls else None)
