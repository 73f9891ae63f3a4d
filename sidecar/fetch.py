"""The miss path's shared fetch: one upstream GET per entity variant, stored if allowed.

It runs as a single-flight task (see `flights.py`): every caller waiting on the same
variant gets the same `Fetched`, or the same exception.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from multidict import CIMultiDict

from sidecar.entry import Entry
from sidecar.headers import STORED_RESPONSE_HEADERS, client_headers
from sidecar.lookup import lookup
from sidecar.matching import Match
from sidecar.policy import response_not_storable_reason
from sidecar.runtime import Runtime
from sidecar.upstream import read_capped

OVERSIZED = "too-large"


@dataclass(frozen=True, slots=True)
class Fetched:
    status: int
    reason: str | None
    headers: CIMultiDict[str]  # end-to-end headers of this exchange
    body: bytes
    entry: Entry | None  # the storable form, when the response may be stored/shared
    not_stored: str | None  # why it was not stored (RFC 9211 detail), or None
    oversized: bool = False
    replica: bool = False  # filled by another replica while this one waited


def _from_replica(entry: Entry) -> Fetched:
    return Fetched(entry.status, None, CIMultiDict(entry.headers), entry.body, entry, None,
                   replica=True)


def strong_etag(body: bytes) -> str:
    return '"sc-' + hashlib.sha256(body).hexdigest()[:32] + '"'


async def fetch(
    rt: Runtime, match: Match, field: str, raw_target: str, headers: CIMultiDict[str],
) -> Fetched:
    """GET the upstream (HEAD misses too, so the answer can be stored) and store it.

    Across replicas, only the lease holder goes upstream; the others wait to be woken
    and read what it stored, or fetch for themselves when the lease runs out.
    """
    assert rt.invalidator is not None and rt.cache is not None
    lease = await rt.coordinator.lead(match.key, field)
    if lease is None:
        woken = await rt.coordinator.wait(match.key, field)
        entry = await lookup(rt, match, field)
        if entry is not None and entry.remaining(rt.clock()) > 0:
            rt.metrics.coalesced.labels(match.rule.key_prefix, "replica").inc()
            return _from_replica(entry)
        rt.metrics.coalesced.labels(
            match.rule.key_prefix, "replica-woken-empty" if woken else "replica-timeout").inc()
    stored = False
    try:
        result = await _fetch_upstream(rt, match, field, raw_target, headers)
        stored = result.entry is not None and result.not_stored is None
        return result
    finally:
        if lease is not None:
            await rt.coordinator.release(lease, match.key, field, stored)


async def _fetch_upstream(
    rt: Runtime, match: Match, field: str, raw_target: str, headers: CIMultiDict[str],
) -> Fetched:
    assert rt.invalidator is not None and rt.cache is not None
    cap = rt.settings.max_body_bytes
    start = time.perf_counter()
    ticket = rt.invalidator.begin(match.key)
    try:
        async with rt.upstream.request("GET", raw_target, headers) as up:
            rt.metrics.upstream.labels(match.rule.name).observe(time.perf_counter() - start)
            out_headers = client_headers(up.headers)
            declared = up.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > cap:
                return Fetched(up.status, up.reason, out_headers, b"", None, OVERSIZED, True)
            body, complete = await read_capped(up, cap)
            if not complete:
                return Fetched(up.status, up.reason, out_headers, b"", None, OVERSIZED, True)
            status, reason = up.status, up.reason
        not_stored = response_not_storable_reason(status, out_headers)
        if not_stored is not None:
            return Fetched(status, reason, out_headers, body, None, not_stored)
        if "ETag" not in out_headers:
            out_headers["ETag"] = strong_etag(body)
        age = up.headers.get("Age", "0")
        entry = Entry(
            status=status,
            headers=tuple((k, v) for k, v in out_headers.items()
                          if k.lower() in STORED_RESPONSE_HEADERS),
            body=body, stored_at=rt.clock(), ttl=match.rule.ttl,
            initial_age=int(age) if age.isdigit() else 0,
        )
        prefix = match.rule.key_prefix
        if ticket.poisoned or rt.invalidator.pending(match.key):
            return Fetched(status, reason, out_headers, body, entry, "invalidated")
        stored = await rt.cache.put(
            match.key, field, rt.codec.seal(match.key, field, entry.encode()),
            match.rule.ttl + match.rule.stale.keep, prefix,
        )
        if stored and ticket.poisoned:
            # A write landed while we were storing: take our copy back out.
            await rt.cache.drop_field(match.key, field, prefix)
            return Fetched(status, reason, out_headers, body, entry, "invalidated")
        return Fetched(status, reason, out_headers, body, entry, None if stored else "cache-error")
    finally:
        rt.invalidator.end(match.key, ticket)
