"""The cache as the request path sees it: it never raises and never waits long.

Every backend call runs under an overall deadline and the circuit breaker; a failure is
counted, logged at most once per interval, and reported to the caller as a miss (None)
or a no-op, so the request simply goes upstream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sidecar.breaker import Breaker
from sidecar.logs import RateLimitedWarning
from sidecar.metrics import Metrics
from sidecar.store import CacheStore, Release

T = TypeVar("T")
log = logging.getLogger("sidecar.cache")


def _reraise_swallowed_cancel() -> None:
    """Python 3.11's `asyncio.wait_for` (used inside redis-py) returns the inner result and
    drops a cancellation that arrives as the inner call finishes (CPython gh-86296, fixed in
    3.12); without this, a cancelled refresh or drain would run on to the upstream.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class GuardedStore:
    def __init__(
        self, store: CacheStore, breaker: Breaker, metrics: Metrics, deadline: float,
        warn_interval: float,
    ) -> None:
        self.store = store
        self.breaker = breaker
        self.metrics = metrics
        self.deadline = deadline
        self._warn = RateLimitedWarning(log, warn_interval)
        self._in_process = getattr(store, "in_process", False)
        self._gauge = -1
        self._up = metrics.backend_up.labels(store.name)
        self._up_gauge = -1
        self._timed_reads = getattr(store, "self_timed_reads", False)
        if hasattr(store, "on_health"):  # a backend with a watcher reports its health
            store.on_health = self._set_gauge
        self._set_gauge()

    @property
    def healthy(self) -> bool:
        """The backend is usable: its watcher says up and the breaker lets calls through."""
        return self.store.up and self.breaker.closed

    async def call(
        self, operation: str, prefix: str, call: Callable[[], Awaitable[T]], default: T,
        *, timed: bool = False,
    ) -> T:
        """Run `call` under the deadline and the breaker; `timed`: it has a deadline inside."""
        permit = self.breaker.allow()
        if permit is None:
            self.metrics.cache_errors.labels(operation, "breaker-open").inc()
            return default
        start = time.perf_counter()
        try:
            if self._in_process or timed:
                # An in-process store cannot hang; a self-timed call has its own deadline.
                result = await call()
            else:
                async with asyncio.timeout(self.deadline):
                    result = await call()
                _reraise_swallowed_cancel()
        except asyncio.CancelledError:
            self.breaker.abandon(permit)
            raise
        except Exception as exc:  # any backend failure is a miss, never an error
            self.breaker.failure()
            self._set_gauge()
            # Backends raise CacheUnavailable (CacheTimeout is also a TimeoutError), with
            # the client's exception as the cause, whose name the warning shows.
            reason = "timeout" if isinstance(exc, TimeoutError) else "error"
            self.metrics.cache_errors.labels(operation, reason).inc()
            cause = type(exc.__cause__ or exc).__name__
            self._warn.warn(
                f"{operation}-{reason}",
                f"cache {operation} failed ({cause}); serving from upstream"
                f" [backend={self.store.name}, breaker={self.breaker.state}]",
            )
            return default
        self.metrics.cache_time(operation, prefix, time.perf_counter() - start)
        self.breaker.success()
        self._set_gauge()
        return result

    def _set_gauge(self) -> None:
        value = 1 if self.breaker.state != "closed" else 0
        if value != self._gauge:  # set on change only: a Gauge.set takes a lock
            self._gauge = value
            self.metrics.breaker_open.set(value)
        up = 1 if value == 0 and self.store.up else 0
        if up != self._up_gauge:
            self._up_gauge = up
            self._up.set(up)

    async def get(self, key: str, field: str, prefix: str) -> bytes | None:
        return await self.call("get", prefix, lambda: self.store.get(key, field), None,
                               timed=self._timed_reads)

    async def put(self, key: str, field: str, value: bytes, keep: int, prefix: str,
                  release: Release | None = None) -> bool:
        async def put() -> bool:
            await self.store.put(key, field, value, keep, release)
            return True
        return await self.call("set", prefix, put, False)

    async def drop_field(self, key: str, field: str, prefix: str) -> bool:
        async def drop() -> bool:
            await self.store.drop_field(key, field)
            return True
        return await self.call("hdel", prefix, drop, False)

    async def delete(self, keys: list[str], prefix: str) -> int | None:
        """None when the delete could not be done (the caller must know: stale risk)."""
        async def delete() -> int | None:
            return await self.store.delete(keys)
        return await self.call("delete", prefix, delete, None)
