"""Read one variant from the cache and open it; anything unreadable is a miss."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.codec import Codec, SealError
from sidecar.entry import CorruptEntry, Entry
from sidecar.guarded_store import GuardedStore
from sidecar.invalidation import Invalidator
from sidecar.matching import Match
from sidecar.metrics import Metrics
from sidecar.near_cache import NearCache
from sidecar.telemetry import Telemetry

log = logging.getLogger("sidecar.cache")


class Decoded:
    """Entries already opened, by (key, field, stored bytes): without a near tier every hit
    reads Redis, and opening the same bytes again (decrypt, parse, check every header)
    would give the same entry. The stored bytes are the key, so nothing here can outlive or
    differ from what Redis holds; the key and field are part of it, as they are of the
    seal's associated data. Bounded in entries and in bytes (small entries only): started
    afresh when either bound is reached."""

    MAX_ENTRIES = 4096
    MAX_BLOB = 16 * 1024
    MAX_BYTES = 16 * 1024 * 1024  # the stored bytes and the opened body, each counted

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, bytes], Entry] = {}
        self._bytes = 0

    def get(self, key: str, field: str, blob: bytes) -> Entry | None:
        return self._entries.get((key, field, blob))

    def put(self, key: str, field: str, blob: bytes, entry: Entry) -> None:
        if len(blob) > self.MAX_BLOB:
            return
        size = len(blob) + len(entry.body)
        if len(self._entries) >= self.MAX_ENTRIES or self._bytes + size > self.MAX_BYTES:
            self._entries.clear()
            self._bytes = 0
        self._entries[(key, field, blob)] = entry
        self._bytes += size


@dataclass(eq=False, slots=True)
class Tiers:
    """What reading a variant needs, and nothing of the request path around it."""

    cache: GuardedStore
    invalidator: Invalidator
    near: NearCache | None
    codec: Codec
    metrics: Metrics
    telemetry: Telemetry
    clock: Callable[[], float]
    decoded: Decoded | None = None  # without a near tier (see Decoded)


def ready(tiers: Tiers, match: Match, field: str) -> Entry | None:
    """The near tier's copy, when it may be served: in sync, Redis's breaker closed,
    nothing pending for the key. None: the store decides (`lookup`). Counts nothing."""
    near = tiers.near
    if near is None or tiers.invalidator.pending(match.key) or not tiers.cache.breaker.closed:
        return None
    return near.get(match.key, field, tiers.clock())


async def lookup(tiers: Tiers, match: Match, field: str) -> Entry | None:
    """The near tier first, then the store; what the store returns fills the near tier."""
    if tiers.invalidator.pending(match.key):
        return None
    near = tiers.near
    epoch = 0
    if near is not None:
        if not tiers.cache.breaker.closed and len(near):
            # Redis is failing: invalidations may not be getting through. Start afresh.
            near.flush()
        entry = ready(tiers, match, field)
        if entry is not None:
            tiers.metrics.near_hit(match.rule.key_prefix)
            return entry
        epoch = near.epoch
    entry = await _from_store(tiers, match, field)
    if entry is not None and tiers.invalidator.erased_since(match.key, entry.stored_at):
        # Stored before a write erased it: back from a replica the delete had not reached
        # (a failover). A miss; the fill that follows overwrites it.
        tiers.metrics.cache_errors.labels("get", "erased").inc()
        return None
    if entry is not None and near is not None:
        near.put(match.key, field, entry, match.rule.ttl + match.rule.stale.keep, epoch)
    return entry


async def _from_store(tiers: Tiers, match: Match, field: str) -> Entry | None:
    prefix = match.rule.key_prefix
    if tiers.telemetry.enabled:
        with tiers.telemetry.tracer.start_as_current_span("cache.lookup") as span:
            blob = await tiers.cache.get(match.key, field, prefix)
            span.set_attributes({"sidecar.key_prefix": prefix, "sidecar.found": blob is not None,
                                 "sidecar.cache.backend": tiers.cache.store.name})
    else:
        blob = await tiers.cache.get(match.key, field, prefix)
    if blob is None:
        return None
    decoded = tiers.decoded
    if decoded is not None and (known := decoded.get(match.key, field, blob)) is not None:
        return known
    try:
        entry = Entry.decode(tiers.codec.open(match.key, field, blob))
        if decoded is not None:
            decoded.put(match.key, field, blob, entry)
        return entry
    except SealError as exc:
        tiers.metrics.decrypt_failures.inc()
        log.warning("stored value did not open (%s); treating as a miss", exc,
                    extra={"key_prefix": prefix})
    except CorruptEntry:
        tiers.metrics.cache_errors.labels("decode", "corrupt").inc()
        log.warning("stored value is not an entry; treating as a miss",
                    extra={"key_prefix": prefix})
    await tiers.cache.drop_field(match.key, field, prefix)
    return None
