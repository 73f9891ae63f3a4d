"""The in-process tier in front of Redis: decoded entries, ready to replay, in this process.

A Redis hit costs a round trip and a decode; a near hit costs a dict lookup. The near tier
must never serve what Redis no longer holds, so:

- an entry expires here when it would in Redis (stored time + TTL + stale window), and it is
  keyed exactly like the Redis variant (credentials still split entries);
- every write, purge or fill on any replica evicts it on every replica, through the
  invalidation channel (see `coordination.py`);
- it is used only while that channel is in sync: when the subscription is lost, the tier
  is flushed and bypassed until a new subscription is confirmed (messages may have been
  missed meanwhile);
- a Redis read that began before an invalidation arrived is not inserted (`epoch`): the
  value it read may be the one just invalidated.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from sidecar.entry import Entry

_OVERHEAD = 256  # bytes per entry beyond body and headers: objects, dict slots


def entry_size(entry: Entry) -> int:
    # Headers twice: as stored and as the serialised block a wire hit sends (wire.py).
    return len(entry.body) + 2 * sum(len(k) + len(v) + 4 for k, v in entry.headers) + _OVERHEAD


class NearCache:
    def __init__(self, max_bytes: int, on_flush: Callable[[], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self._on_flush = on_flush
        self._entries: OrderedDict[tuple[str, str], tuple[Entry, float, int]] = OrderedDict()
        self._fields: dict[str, set[str]] = {}
        self._bytes = 0
        self.epoch = 0  # bumped by every eviction message: reads older than it don't insert
        self.in_sync = False  # set by the invalidation channel's owner

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.in_sync

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._bytes

    def get(self, key: str, field: str, now: float) -> Entry | None:
        if not self.in_sync:
            return None
        item = self._entries.get((key, field))
        if item is None:
            return None
        entry, expires, _ = item
        if now >= expires:
            self._drop((key, field))
            return None
        self._entries.move_to_end((key, field))
        return entry

    def put(self, key: str, field: str, entry: Entry, keep: int, epoch: int) -> None:
        """Insert what Redis holds now; `epoch` is `self.epoch` from before it was read.

        When it cannot be inserted (an eviction arrived meanwhile, or it is too big), the
        slot's older entry goes anyway: what was just read or stored supersedes it.
        """
        if not self.enabled:
            return
        self._drop((key, field))
        size = entry_size(entry)
        if epoch != self.epoch or size > self.max_bytes // 8:  # one entry must not flush the rest
            return
        self._entries[(key, field)] = (entry, entry.stored_at + keep, size)
        self._fields.setdefault(key, set()).add(field)
        self._bytes += size
        while self._bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def evict(self, keys: tuple[str, ...] = (), prefix: str | None = None) -> None:
        self.epoch += 1
        for key in keys:
            for field in list(self._fields.get(key, ())):
                self._drop((key, field))
        if prefix is not None:
            start = prefix + ":"
            for key in [k for k in self._fields if k.startswith(start)]:
                for field in list(self._fields.get(key, ())):
                    self._drop((key, field))

    def evict_field(self, key: str, field: str) -> None:
        self.epoch += 1
        self._drop((key, field))

    def flush(self) -> None:
        self.epoch += 1
        if self._on_flush is not None:
            self._on_flush()
        self._entries.clear()
        self._fields.clear()
        self._bytes = 0

    def _drop(self, slot: tuple[str, str]) -> None:
        item = self._entries.pop(slot, None)
        if item is None:
            return
        self._bytes -= item[2]
        fields = self._fields.get(slot[0])
        if fields is not None:
            fields.discard(slot[1])
            if not fields:
                del self._fields[slot[0]]
