"""Erase entities after successful writes (RFC 9111 §4.4), and keep that promise.

Two races would let a stale record outlive a write: a miss fetched before the write that
stores after the DEL, and a DEL lost while Redis is down. Tickets cover the first (a
write poisons every in-flight fetch of the key, which then neither stores nor keeps what
it stored); a pending set covers the second (the key bypasses the cache until a retried
DEL succeeds).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

from sidecar.guarded_store import GuardedStore
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.invalidation")
MAX_PENDING = 10_000


class Ticket:
    __slots__ = ("poisoned",)

    def __init__(self) -> None:
        self.poisoned = False


class Invalidator:
    def __init__(self, cache: GuardedStore, metrics: Metrics, retry_every: float = 1.0) -> None:
        self.cache = cache
        self.metrics = metrics
        self.retry_every = retry_every
        self._active: defaultdict[str, set[Ticket]] = defaultdict(set)
        self._pending: set[str] = set()
        self._retry: asyncio.Task[None] | None = None
        # Told of every invalidation, so single-flight stops handing out older fetches.
        self.on_invalidate: list[Callable[[tuple[str, ...], str | None], None]] = []

    def begin(self, key: str) -> Ticket:
        ticket = Ticket()
        self._active[key].add(ticket)
        return ticket

    def end(self, key: str, ticket: Ticket) -> None:
        tickets = self._active.get(key)
        if tickets is not None:
            tickets.discard(ticket)
            if not tickets:
                del self._active[key]

    def pending(self, key: str) -> bool:
        """A write to `key` could not be propagated yet: do not read or store it."""
        return key in self._pending

    def poison(self, keys: tuple[str, ...] = (), prefix: str | None = None) -> None:
        """In-flight fetches of these keys (or under `prefix:`) must not store."""
        for hook in self.on_invalidate:
            hook(keys, prefix)
        for key, tickets in self._active.items():
            if key in keys or (prefix is not None and key.startswith(prefix + ":")):
                for ticket in tickets:
                    ticket.poisoned = True

    async def invalidate(self, keys: tuple[str, ...], kind: str) -> None:
        self.poison(keys)
        if not keys:
            return
        done = await self.cache.delete(list(keys), "invalidation")
        if done is None:
            self.defer(keys)
        else:
            self.metrics.invalidations.labels(kind).inc(len(keys))

    def defer(self, keys: tuple[str, ...]) -> None:
        """Bypass these keys until a retried delete reaches the store."""
        if len(self._pending) + len(keys) > MAX_PENDING:
            log.error("too many invalidations pending while the cache is unreachable; "
                      "entries may be served until their TTL ends")
            return
        self._pending.update(keys)
        if self._retry is None or self._retry.done():
            self._retry = asyncio.ensure_future(self._retry_loop())

    async def _retry_loop(self) -> None:
        while self._pending:
            await asyncio.sleep(self.retry_every)
            keys = sorted(self._pending)
            if await self.cache.delete(keys, "invalidation") is not None:
                self._pending.difference_update(keys)
                self.metrics.invalidations.labels("deferred").inc(len(keys))

    async def wait_idle(self) -> None:
        """Until the pending invalidations are through (for drain and tests)."""
        if self._retry is not None and not self._retry.done():
            await asyncio.shield(self._retry)

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            await asyncio.gather(self._retry, return_exceptions=True)
