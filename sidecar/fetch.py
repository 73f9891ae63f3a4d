"""The miss path's shared fetch: one upstream GET per entity variant, stored if allowed.

It runs as a single-flight task (see `flights.py`): every caller waiting on the same
variant gets the same `Fetched`, or the same exception.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

from multidict import CIMultiDict

from sidecar.entry import Entry
from sidecar.errors import UpstreamUnavailable
from sidecar.headers import STORED_RESPONSE_HEADERS, client_headers
from sidecar.lookup import lookup
from sidecar.matching import Match
from sidecar.policy import response_not_storable_reason
from sidecar.runtime import Runtime
from sidecar.upstream import read_capped

OVERSIZED = "too-large"
_AGE = re.compile(r"[0-9]{1,10}", re.ASCII)


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


def _age(value: str | None) -> int:
    """The upstream's `Age` (RFC 9111 §5.1), or 0 when absent or not a sane number."""
    return int(value) if value is not None and _AGE.fullmatch(value.strip()) else 0


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
    prefix = match.rule.key_prefix
    claim = await rt.coordinator.claim(match.key, field, prefix)
    if claim.lease is None:
        woken = await rt.coordinator.wait(claim)
        entry = await lookup(rt, match, field)
        if entry is not None and entry.remaining(rt.clock()) > 0:
            rt.metrics.coalesced.labels(prefix, "replica").inc()
            return _from_replica(entry)
        rt.metrics.coalesced.labels(
            prefix, "replica-woken-empty" if woken else "replica-timeout").inc()
    try:
        return await _fetch_upstream(rt, match, field, raw_target, headers)
    finally:
        if claim.lease is not None:
            await rt.coordinator.release(claim.lease, match.key, field, prefix)


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
            if not 200 <= up.status <= 599:
                raise UpstreamUnavailable("upstream sent a status a proxy cannot relay")
            out_headers = client_headers(up.headers)
            declared = up.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > cap:
                return Fetched(up.status, up.reason, out_headers, b"", None, OVERSIZED, True)
            body, complete = await read_capped(up, cap)
            if not complete:
                return Fetched(up.status, up.reason, out_headers, b"", None, OVERSIZED, True)
            status, reason = up.status, up.reason
        prefix = match.rule.key_prefix
        if status in (401, 403):
            # The caller's credentials no longer open this entity: drop their stale copy.
            await rt.cache.drop_field(match.key, field, prefix)
        # Judged on the headers as received: a `Connection: Set-Cookie` must not hide one.
        not_stored = response_not_storable_reason(status, up.headers)
        if not_stored is not None:
            return Fetched(status, reason, out_headers, body, None, not_stored)
        if "ETag" not in out_headers:
            out_headers["ETag"] = strong_etag(body)
        age = _age(up.headers.get("Age"))
        if age >= match.rule.ttl:
            return Fetched(status, reason, out_headers, body, None, "too-old")
        entry = Entry(
            status=status,
            headers=tuple((k, v) for k, v in out_headers.items()
                          if k.lower() in STORED_RESPONSE_HEADERS),
            body=body, stored_at=rt.clock(), ttl=match.rule.ttl,
            initial_age=age,
        )
        if ticket.poisoned or rt.invalidator.pending(match.key):
            # Older than a write: the leader may answer with it, nobody else may reuse it.
            return Fetched(status, reason, out_headers, body, None, "invalidated")
        stored = await rt.cache.put(
            match.key, field, rt.codec.seal(match.key, field, entry.encode()),
            match.rule.ttl + match.rule.stale.keep, prefix,
        )
        if stored and ticket.poisoned:
            # A write landed while we were storing: take our copy back out.
            if not await rt.cache.drop_field(match.key, field, prefix):
                rt.invalidator.defer((match.key,))
            return Fetched(status, reason, out_headers, body, None, "invalidated")
        return Fetched(status, reason, out_headers, body, entry, None if stored else "cache-error")
    finally:
        rt.invalidator.end(match.key, ticket)
