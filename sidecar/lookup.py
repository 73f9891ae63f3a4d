"""Read one variant from the cache and open it; anything unreadable is a miss."""

from __future__ import annotations

import logging

from sidecar.codec import SealError
from sidecar.entry import CorruptEntry, Entry
from sidecar.matching import Match
from sidecar.runtime import Runtime

log = logging.getLogger("sidecar.cache")


async def lookup(rt: Runtime, match: Match, field: str) -> Entry | None:
    assert rt.cache is not None and rt.invalidator is not None
    if rt.invalidator.pending(match.key):
        return None
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
