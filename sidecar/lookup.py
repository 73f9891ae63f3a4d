"""Read one variant from the cache and open it; anything unreadable is a miss."""

from __future__ import annotations

import logging

from sidecar.codec import SealError
from sidecar.entry import CorruptEntry, Entry
from sidecar.matching import Match
from sidecar.runtime import Runtime

log = logging.getLogger("sidecar.cache")


async def lookup(rt: Runtime, match: Match, field: str) -> Entry | None:
    """The near tier first, then the store; what the store returns fills the near tier."""
    assert rt.cache is not None and rt.invalidator is not None
    if rt.invalidator.pending(match.key):
        return None
    near = rt.near
    epoch = 0
    if near is not None:
        if not rt.cache.breaker.closed:
            # Redis is failing: invalidations may not be getting through. Start afresh.
            if len(near):
                near.flush()
        else:
            entry = near.get(match.key, field, rt.clock())
            if entry is not None:
                rt.metrics.near_hit(match.rule.key_prefix)
                return entry
        epoch = near.epoch
    entry = await _from_store(rt, match, field)
    if entry is not None and rt.invalidator.erased_since(match.key, entry.stored_at):
        # Stored before a write erased it: back from a replica the delete had not reached
        # (a failover). A miss; the fill that follows overwrites it.
        rt.metrics.cache_errors.labels("get", "erased").inc()
        return None
    if entry is not None and near is not None:
        near.put(match.key, field, entry, match.rule.ttl + match.rule.stale.keep, epoch)
    return entry


async def _from_store(rt: Runtime, match: Match, field: str) -> Entry | None:
    assert rt.cache is not None
    prefix = match.rule.key_prefix
    if rt.telemetry.enabled:
        with rt.telemetry.tracer.start_as_current_span("cache.lookup") as span:
            blob = await rt.cache.get(match.key, field, prefix)
            span.set_attributes({"sidecar.key_prefix": prefix, "sidecar.found": blob is not None,
                                 "sidecar.cache.backend": rt.cache.store.name})
    else:
        blob = await rt.cache.get(match.key, field, prefix)
    if blob is None:
        return None
    try:
        return Entry.decode(rt.codec.open(match.key, field, blob))
    except SealError as exc:
        rt.metrics.decrypt_failures.inc()
        log.warning("stored value did not open (%s); treating as a miss", exc,
                    extra={"key_prefix": prefix})
    except CorruptEntry:
        rt.metrics.cache_errors.labels("decode", "corrupt").inc()
        log.warning("stored value is not an entry; treating as a miss",
                    extra={"key_prefix": prefix})
    await rt.cache.drop_field(match.key, field, prefix)
    return None
