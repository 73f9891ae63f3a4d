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
from collections.abc import Callable
from typing import Any

from sidecar.errors import CacheUnavailable
from sidecar.guarded_store import GuardedStore
from sidecar.near_cache import NearCache
from sidecar.store import CacheStore, Release, lease_name

log = logging.getLogger("sidecar.coordination")
_FAILURES = (CacheUnavailable, OSError, TimeoutError)
HEARTBEAT = 1.0  # seconds between pings on the subscription
PONG_DEADLINE = 2.0  # a pong later than this: the subscription is presumed dead


class Lease:
    __slots__ = ("name", "released", "token")

    def __init__(self, name: str, token: str | None) -> None:
        self.name = name
        self.token = token  # None: coordination unavailable, proceed alone
        self.released = False  # released with the store, wake-up sent


class Claim:
    """Either a lease to fetch, or a wake-up armed before the lease was tried."""

    __slots__ = ("lease", "message", "wakeup")

    def __init__(self, lease: Lease | None, wakeup: asyncio.Future[None] | None = None,
                 message: str = "") -> None:
        self.lease = lease
        self.wakeup = wakeup
        self.message = message


_ALONE = Claim(Lease("", None))


class Coordinator:
    """No-op for the in-process store: single-flight already covers one process."""

    enabled = False

    @property
    def state(self) -> str:
        """For /readyz: whether replicas can wake this one (informational only)."""
        return "off"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def claim(self, key: str, field: str, prefix: str) -> Claim:
        return _ALONE

    async def wait(self, claim: Claim) -> bool:
        return False

    async def release(self, lease: Lease, key: str, field: str, prefix: str) -> None:
        return None

    async def filled(self, key: str, field: str, prefix: str) -> None:
        """Tell the other replicas that this variant changed in the store."""
        return None

    def release_with(self, lease: Lease, key: str, field: str) -> Release | None:
        """The release and its wake-up, to ride along with the store."""
        return None

    async def announce(self, keys: tuple[str, ...] = (), prefix: str | None = None) -> bool:
        """Tell the other replicas' near-caches that these entities changed; False if the
        message may not have gone out (the caller retries it)."""
        return True


class RedisCoordinator(Coordinator):
    """Over any shared backend (standalone, Sentinel, Cluster): only the seam's calls.

    The two channels are classic pub/sub (cluster-wide on a cluster, see `redis_ha.py`):
    `<service>:cache-filled` wakes lease waiters and evicts one variant from the near tiers,
    `<service>:invalidate` carries writes and purges to the other replicas.
    """

    enabled = True

    def __init__(
        self, cache: GuardedStore, store: CacheStore, service: str,
        lease_seconds: float, wait_seconds: float, near: NearCache | None = None,
    ) -> None:
        self.cache = cache
        self.store = store
        self.near = near
        # Who sent a message: a replica does not evict what it has just stored itself.
        self.origin = secrets.token_hex(6)
        self.channel = f"{service}:cache-filled"
        self.invalidate_channel = f"{service}:invalidate"
        # Set by the app: what another replica's write means here (Invalidator.remote).
        self.on_remote_invalidation: Callable[[tuple[str, ...], str | None], None] | None = None
        self.service = service
        self.lease_ms = int(lease_seconds * 1000)
        self.wait_seconds = min(wait_seconds, lease_seconds)
        self._waiters: defaultdict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @property
    def state(self) -> str:
        return "subscribed" if self._subscribed.is_set() else "connecting"

    async def start(self) -> None:
        self._listener = asyncio.ensure_future(self._listen())

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    def _name(self, key: str, field: str) -> str:
        """In the entity's slot (`{key}` hash tag): a cluster runs the release script there."""
        return lease_name(key, hashlib.sha256(field.encode()).hexdigest()[:16])

    async def claim(self, key: str, field: str, prefix: str) -> Claim:
        """Try the lease. Nobody waits unless Redis is healthy and a wake-up can arrive."""
        if not self._subscribed.is_set() or self.cache.breaker.state != "closed":
            return _ALONE
        message = f"{key}\n{field}"
        wakeup: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[message].add(wakeup)  # armed first: a fill cannot slip past us
        name, token = self._name(key, field), secrets.token_hex(8)

        async def acquire() -> bool | None:
            return await self.store.acquire(name, token, self.lease_ms)

        won = await self.cache.call("lease", prefix, acquire, None)
        if won is False:
            return Claim(None, wakeup, message)
        self._disarm(message, wakeup)
        return Claim(Lease(name, token if won else None))

    async def wait(self, claim: Claim) -> bool:
        """Until the lease holder fills the variant; False after `wait_seconds`."""
        if claim.wakeup is None:
            return False
        try:
            async with asyncio.timeout(self.wait_seconds):
                await claim.wakeup
            return True
        except TimeoutError:
            return False
        finally:
            self._disarm(claim.message, claim.wakeup)

    def _disarm(self, message: str, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(message)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[message]

    async def release(self, lease: Lease, key: str, field: str, prefix: str) -> None:
        if lease.token is None or lease.released:
            return
        token = lease.token

        async def release() -> None:
            await self.store.release(
                Release(lease.name, token, self.channel, f"{key}\n{field}\n{self.origin}"))

        await self.cache.call("release", prefix, release, None)

    def release_with(self, lease: Lease, key: str, field: str) -> Release | None:
        if lease.token is None or lease.released:
            return None
        return Release(lease.name, lease.token, self.channel, f"{key}\n{field}\n{self.origin}")

    async def filled(self, key: str, field: str, prefix: str) -> None:
        """A variant stored without a lease (coordination was down): still tell the others."""
        async def publish() -> None:
            await self.store.publish(self.channel, f"{key}\n{field}\n{self.origin}")

        await self.cache.call("publish", prefix, publish, None)

    async def announce(self, keys: tuple[str, ...] = (), prefix: str | None = None) -> bool:
        if not keys and prefix is None:
            return True
        body = "\n".join(("P", prefix) if prefix is not None else ("K", *keys))

        async def publish() -> bool:
            await self.store.publish(self.invalidate_channel, f"{self.origin}\n{body}")
            return True

        return await self.cache.call("publish", "invalidation", publish, False)

    async def _listen(self) -> None:
        """One subscription per process; reconnects after a pause when Redis goes away.

        The near-cache is in sync only between a confirmed subscription and its loss: it is
        flushed on both edges, since messages sent while nobody listened are gone. A socket
        that dies silently (a NAT or conntrack timeout) delivers nothing and reports nothing,
        so a PING goes down the subscription every `HEARTBEAT` seconds and a missing pong
        within `PONG_DEADLINE` counts as a loss.
        """
        loop = asyncio.get_running_loop()
        while True:
            pubsub = self.store.subscription()
            confirmed = 0
            try:
                await pubsub.subscribe(self.channel, self.invalidate_channel)
                pinged, waiting_since = loop.time(), None
                while True:
                    message: dict[str, Any] | None = await pubsub.get_message(HEARTBEAT / 4)
                    now = loop.time()
                    if waiting_since is not None and now - waiting_since > PONG_DEADLINE:
                        raise ConnectionError("pub/sub heartbeat unanswered")
                    if waiting_since is None and confirmed >= 2 and now - pinged >= HEARTBEAT:
                        await pubsub.ping()
                        pinged = waiting_since = now
                    if message is None:
                        continue
                    kind = message.get("type")
                    if kind == "pong":
                        waiting_since = None
                        continue
                    if kind == "subscribe":
                        confirmed += 1
                        if confirmed == 2:  # both channels: nothing can slip past now
                            self._in_sync(True)
                            self._subscribed.set()
                    elif kind == "message":
                        self._on_message(message["channel"], message["data"])
            except _FAILURES as exc:
                log.debug("coordination subscriber lost (%s)", type(exc).__name__)
            finally:
                self._subscribed.clear()
                self._in_sync(False)
                with contextlib.suppress(*_FAILURES):
                    await pubsub.aclose()
            await asyncio.sleep(1.0)

    def _in_sync(self, value: bool) -> None:
        if self.near is not None:
            self.near.flush()
            self.near.in_sync = value

    def _on_message(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        text = data.decode() if isinstance(data, bytes) else data
        if name == self.invalidate_channel:
            origin, _, body = text.partition("\n")
            kind, _, rest = body.partition("\n")
            if origin != self.origin:
                keys, prefix = ((), rest) if kind == "P" else (tuple(rest.split("\n")), None)
                if self.on_remote_invalidation is not None:
                    self.on_remote_invalidation(keys, prefix)  # tickets, flights, near tier
                elif self.near is not None:
                    self.near.evict(keys, prefix)
            return
        key, _, rest = text.partition("\n")
        field, _, origin = rest.partition("\n")
        if origin != self.origin and self.near is not None:
            self.near.evict_field(key, field)
        for future in self._waiters.pop(f"{key}\n{field}", ()):
            if not future.done():
                future.set_result(None)
