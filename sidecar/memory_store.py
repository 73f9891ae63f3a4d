"""In-process store with the Redis semantics (one hash per entity, key-level expiry).

For the demo and single-instance use. Bounded by total bytes with LRU eviction, so a
flood of distinct ids cannot exhaust the process's memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from sidecar.store import Release, Subscription


class MemoryStore:
    name = "memory"
    in_process = True  # never blocks on I/O: the guard needs no deadline around it
    shared = False  # one process: no lease, no channel (single-flight covers it)
    up = True

    def __init__(
        self, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, dict[str, bytes]]] = OrderedDict()
        self._bytes = 0

    def _live(self, key: str) -> dict[str, bytes] | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, fields = item
        if self._clock() >= expires:
            self._remove(key)
            return None
        self._data.move_to_end(key)
        return fields

    def _remove(self, key: str) -> bool:
        item = self._data.pop(key, None)
        if item is None:
            return False
        self._bytes -= sum(len(f) + len(v) for f, v in item[1].items())
        return True

    async def get(self, key: str, field: str) -> bytes | None:
        fields = self._live(key)
        return None if fields is None else fields.get(field)

    async def put(self, key: str, field: str, value: bytes, keep: int,
                  release: Release | None = None) -> None:
        size = len(field) + len(value)
        if size > self.max_bytes:
            return
        fields = self._live(key) or {}
        old = fields.get(field)
        if old is not None:
            self._bytes -= len(field) + len(old)
        fields[field] = value
        self._bytes += size
        self._data[key] = (self._clock() + keep, fields)
        self._data.move_to_end(key)
        while self._bytes > self.max_bytes and self._data:
            oldest = next(iter(self._data))
            self._remove(oldest)

    async def drop_field(self, key: str, field: str) -> None:
        fields = self._live(key)
        if fields is not None and field in fields:
            self._bytes -= len(field) + len(fields.pop(field))
            if not fields:
                self._remove(key)

    async def delete(self, keys: list[str]) -> int:
        return sum(self._remove(k) for k in keys)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.delete([k for k in self._data if k.startswith(prefix + ":")])

    def ttl(self, key: str) -> float | None:
        """Seconds left for `key` (like Redis `TTL`), for tests and the admin API."""
        item = self._data.get(key)
        return None if item is None else item[0] - self._clock()

    async def start(self) -> None:
        return None

    async def acquire(self, lease: str, token: str, ttl_ms: int) -> bool:
        return True  # never asked: nothing is shared (see `shared`)

    async def release(self, release: Release) -> None:
        return None

    async def publish(self, channel: str, message: str) -> None:
        return None

    def subscription(self) -> Subscription:
        raise NotImplementedError("memory:// is not shared: there is nobody to hear from")

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()
        self._bytes = 0
