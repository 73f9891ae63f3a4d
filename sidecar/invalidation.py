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
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from sidecar.guarded_store import GuardedStore
from sidecar.logs import RateLimitedWarning
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.invalidation")
MAX_PENDING = 10_000
MAX_TOMBSTONES = 100_000  # erase times kept (about 10 MB at most)
PREFIX_TIMEOUT = 10.0  # a SCAN over every entity under a prefix: seconds, not the hit budget


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
        self._pending_prefixes: set[str] = set()
        # When this process last stored each entity: a write announced by another replica
        # after that store may have been overtaken by it (see `remote`).
        self._stored: dict[str, float] = {}
        self.recent_window = 35.0  # longer than any fill can take (UPSTREAM_FILL_TIMEOUT_S)
        self._warn = RateLimitedWarning(log, 10.0)
        self._retry: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Told of every invalidation, so single-flight stops handing out older fetches.
        self.on_invalidate: list[Callable[[tuple[str, ...], str | None], None]] = []
        # When each entity (or `prefix:`) was last erased, by the wall clock entries are
        # stamped with (never going back, so a clock step can only make it stricter): a
        # copy stored, or read, before that is one the erase should have removed,
        # brought back by a failover to a replica the delete had not reached yet.
        self._erased: dict[str, float] = {}
        self._erased_floor = 0.0
        self._last_erase = 0.0
        # Tells the other replicas (their near-caches) once the store has been told.
        self.announce: Callable[[tuple[str, ...], str | None], Awaitable[bool]] | None = None
        # Announcements that may not have reached the other replicas: retried like deletes,
        # since a replica that never hears of a write keeps serving its near copy.
        self._unannounced: set[str] = set()
        self._unannounced_prefixes: set[str] = set()

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
        if self._pending_prefixes and key.rpartition(":")[0] in self._pending_prefixes:
            return True
        return key in self._pending

    def poison(self, keys: tuple[str, ...] = (), prefix: str | None = None) -> None:
        """In-flight fetches of these keys (or under `prefix:`) must not store."""
        self._tombstone((*keys, *(() if prefix is None else (prefix + ":",))))
        for hook in self.on_invalidate:
            hook(keys, prefix)
        for key, tickets in self._active.items():
            if key in keys or (prefix is not None and key.startswith(prefix + ":")):
                for ticket in tickets:
                    ticket.poisoned = True

    def _tombstone(self, names: tuple[str, ...]) -> None:
        now = self._last_erase = max(time.time(), self._last_erase + 1e-6)
        for name in names:
            self._erased.pop(name, None)
            self._erased[name] = now
        while len(self._erased) > MAX_TOMBSTONES:  # oldest first; older copies are suspect
            oldest = next(iter(self._erased))
            self._erased_floor = max(self._erased_floor, self._erased.pop(oldest))

    def erased_since(self, key: str, moment: float) -> bool:
        """Whether `key` was erased at or after `moment` (wall clock, `time.time()`).

        A copy stored before its entity's last erase must not be served (a promoted
        replica may still hold what the erase removed); a copy read before a write must
        not stand in for a failed upstream.
        """
        if moment <= self._erased_floor:
            return True
        if not self._erased:
            return False
        at = self._erased.get(key)
        if at is not None and moment <= at:
            return True
        at = self._erased.get(key.rpartition(":")[0] + ":")
        return at is not None and moment <= at

    def stored(self, key: str) -> None:
        """A fill of `key` reached the store (called after a successful put)."""
        now = time.monotonic()
        self._stored[key] = now
        if len(self._stored) > MAX_PENDING:
            cutoff = now - self.recent_window
            self._stored = {k: t for k, t in self._stored.items() if t >= cutoff}

    def remote(self, keys: tuple[str, ...] = (), prefix: str | None = None) -> None:
        """Another replica erased these entities after a write or purge.

        Fetches in flight here began before that write: they must not store (poison). A
        fill that stored here just before the message arrived may hold the old record in
        Redis, overtaking the other replica's delete: erase it again.
        """
        self.poison(keys, prefix)
        cutoff = time.monotonic() - self.recent_window
        again = [k for k, t in self._stored.items() if t >= cutoff and (
            k in keys or (prefix is not None and k.startswith(prefix + ":")))]
        if again:
            for key in again:
                self._stored.pop(key, None)
            task = asyncio.ensure_future(self.invalidate(tuple(again), "overtaken"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def invalidate(self, keys: tuple[str, ...], kind: str) -> None:
        self.poison(keys)
        if not keys:
            return
        done = await self.cache.delete(list(keys), "invalidation")
        # Reads that began while the delete was on its way may have refilled this process's
        # near tier or started fills from the old record: once more, now that it is gone.
        self.poison(keys)
        if done is None:
            self.defer(keys)
        else:
            self.metrics.invalidations.labels(kind).inc(len(keys))
        await self.tell_others(keys)

    async def invalidate_prefixes(self, prefixes: tuple[str, ...]) -> None:
        """Erase every entity under these prefixes: a write hit one the sidecar cannot name.

        The prefixes bypass the cache from now until the erase has reached the store.
        """
        for prefix in prefixes:
            self.poison(prefix=prefix)
        self._pending_prefixes.update(prefixes)
        self._warn.warn("unsure-write", "a write addressed an id the sidecar cannot read; "
                        f"erasing every entity under {', '.join(prefixes)}")
        for prefix in prefixes:
            self.metrics.conservative_erases.labels(prefix).inc()
            await self._erase_prefix(prefix)
            await self.tell_others(prefix=prefix)
        if self._pending_prefixes:
            self._start_retry()

    async def tell_others(self, keys: tuple[str, ...] = (), prefix: str | None = None) -> None:
        """Tell the other replicas; what may not have gone out is sent again later."""
        if self.announce is None or await self.announce(keys, prefix):
            return
        if prefix is not None:
            self._unannounced_prefixes.add(prefix)
        else:
            self._unannounced.update(keys)
        if len(self._unannounced) > MAX_PENDING:  # bounded: one prefix message per entity kind
            self._unannounced_prefixes.update(k.rpartition(":")[0] for k in self._unannounced)
            self._unannounced.clear()
        self._start_retry()

    async def _erase_prefix(self, prefix: str) -> bool:
        try:
            async with asyncio.timeout(PREFIX_TIMEOUT):
                removed = await self.cache.store.delete_prefix(prefix)
            self.poison(prefix=prefix)  # what was read or refilled during the SCAN goes too
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the prefix stays bypassed; the retry loop tries again
            self._warn.warn("prefix-erase", f"erasing {prefix} failed ({type(exc).__name__}); "
                            "bypassing it until a retry succeeds")
            return False
        self._pending_prefixes.discard(prefix)
        self.metrics.invalidations.labels("conservative").inc(removed)
        return True

    def defer(self, keys: tuple[str, ...]) -> None:
        """Bypass these keys until a retried delete reaches the store."""
        if len(self._pending) + len(keys) > MAX_PENDING:
            # Too many to track one by one: bypass (and later erase) their whole prefixes
            # instead. Serving an entry a write changed is never the fallback.
            prefixes = {k.rpartition(":")[0] for k in keys}
            self._warn.warn("pending-overflow", "too many invalidations pending while the "
                            f"cache is unreachable; bypassing {', '.join(sorted(prefixes))} "
                            "until it can be erased")
            self._pending_prefixes.update(prefixes)
            self._start_retry()
            return
        self._pending.update(keys)
        self._start_retry()

    def _start_retry(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.ensure_future(self._retry_loop())

    async def _retry_loop(self) -> None:
        while (self._pending or self._pending_prefixes or self._unannounced
               or self._unannounced_prefixes):
            await asyncio.sleep(self.retry_every)
            await self._announce_again()
            for prefix in sorted(self._pending_prefixes):
                await self._erase_prefix(prefix)
            keys = sorted(self._pending)
            if keys and await self.cache.delete(keys, "invalidation") is not None:
                self.poison(tuple(keys))
                self._pending.difference_update(keys)
                self.metrics.invalidations.labels("deferred").inc(len(keys))
                await self.tell_others(tuple(keys))

    async def _announce_again(self) -> None:
        if self.announce is None:
            return
        for prefix in sorted(self._unannounced_prefixes):
            if await self.announce((), prefix):
                self._unannounced_prefixes.discard(prefix)
        keys = tuple(sorted(self._unannounced))
        if keys and await self.announce(keys, None):
            self._unannounced.difference_update(keys)

    async def wait_idle(self) -> None:
        """Until the pending invalidations are through (for drain and tests)."""
        if self._retry is not None and not self._retry.done():
            await asyncio.shield(self._retry)

    async def close(self) -> None:
        tasks = [*self._background, *([self._retry] if self._retry is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
