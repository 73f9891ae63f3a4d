"""Cross-replica stampede protection: a short Redis lease per cold variant, and a wake-up.

The replica that wins `SET NX PX` fetches; the others wait to be woken by a pub/sub
message once the entry is stored (not polling), then read it. A waiter never waits
longer than the lease: if the leader dies, the others fetch for themselves. Redis
trouble of any kind means "no coordination": everyone fetches, nothing blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections import defaultdict
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sidecar.guarded_store import GuardedStore

log = logging.getLogger("sidecar.coordination")
_RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('del', KEYS[1]) else return 0 end")
_FAILURES = (RedisError, OSError, TimeoutError)


class Lease:
    __slots__ = ("name", "token")

    def __init__(self, name: str, token: str | None) -> None:
        self.name = name
        self.token = token  # None: coordination unavailable, proceed alone


class Coordinator:
    """No-op for the in-process store: single-flight already covers one process."""

    enabled = False

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def lead(self, key: str, field: str) -> Lease | None:
        """A lease to fetch, or None when another replica is fetching already."""
        return Lease("", None)

    async def wait(self, key: str, field: str) -> bool:
        return False

    async def release(self, lease: Lease, key: str, field: str, stored: bool) -> None:
        return None


class RedisCoordinator(Coordinator):
    enabled = True

    def __init__(
        self, cache: GuardedStore, client: Redis, subscriber: Redis, service: str,
        lease_seconds: float, wait_seconds: float,
    ) -> None:
        self.cache = cache
        self.client = client
        self.subscriber = subscriber
        self.channel = f"{service}:cache-filled"
        self.service = service
        self.lease_ms = int(lease_seconds * 1000)
        self.wait_seconds = wait_seconds
        self._waiters: defaultdict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._listener = asyncio.ensure_future(self._listen())

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self.subscriber.aclose()

    def _name(self, key: str, field: str) -> str:
        entity = key.split(":", 1)[1]
        return f"{self.service}:lease:{entity}:{hashlib.sha256(field.encode()).hexdigest()[:16]}"

    @staticmethod
    def _message(key: str, field: str) -> str:
        return f"{key}\n{field}"

    async def lead(self, key: str, field: str) -> Lease | None:
        if not self._subscribed.is_set():
            return Lease("", None)  # nobody could be woken: do not make anyone wait
        name = self._name(key, field)
        token = secrets.token_hex(8)

        async def acquire() -> bool | None:
            return bool(await self.client.set(name, token, nx=True, px=self.lease_ms))

        won = await self.cache.call("lease", key.rsplit(":", 1)[0], acquire, None)
        if won is None:
            return Lease(name, None)
        return Lease(name, token) if won else None

    async def wait(self, key: str, field: str) -> bool:
        """Wait to be woken for this variant; False on timeout."""
        message = self._message(key, field)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[message].add(future)
        try:
            async with asyncio.timeout(self.wait_seconds):
                await future
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(message)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[message]

    async def release(self, lease: Lease, key: str, field: str, stored: bool) -> None:
        if lease.token is None:
            return
        prefix = key.rsplit(":", 1)[0]
        token = lease.token

        async def release() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.eval(_RELEASE, 1, lease.name, token)
                pipe.publish(self.channel, self._message(key, field))
                await pipe.execute()

        await self.cache.call("release", prefix, release, None)

    async def _listen(self) -> None:
        """One subscription per process; reconnects after a pause when Redis goes away."""
        while True:
            pubsub = self.subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                while True:
                    message: dict[str, Any] | None = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._wake(message["data"])
            except _FAILURES as exc:
                self._subscribed.clear()
                log.debug("coordination subscriber lost (%s)", type(exc).__name__)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(*_FAILURES):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(1.0)

    def _wake(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        for future in self._waiters.pop(text, ()):
            if not future.done():
                future.set_result(None)
