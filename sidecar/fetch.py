"""The miss path's shared fetch: one upstream GET per entity variant, stored if allowed.

It runs as a single-flight task (see `flights.py`): every caller waiting on the same
variant gets the same `Fetched`, or the same exception.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from email.utils import formatdate

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.coordination import Coordinator, Lease
from sidecar.decisions import (
    NotStored,
    Refetch,
    Store,
    on_lifetime,
    on_not_modified,
    on_response,
    supersedes,
)
from sidecar.entry import Entry
from sidecar.errors import UpstreamTimeout, UpstreamUnavailable
from sidecar.fetched import Fetched, Handover
from sidecar.freshness import apparent_age, delta
from sidecar.headers import (
    COMPUTED_PER_ANSWER,
    client_headers,
    has_undecodable_value,
    has_unsendable_value,
)
from sidecar.logs import RateLimitedWarning
from sidecar.lookup import Tiers, lookup
from sidecar.matching import Match
from sidecar.revalidation import conditional_headers
from sidecar.upstream import Upstream, read_capped
from sidecar.upstream_framing import overflowed

OVERSIZED = "too-large"
_warn = RateLimitedWarning(logging.getLogger("sidecar.upstream"), 10.0)


@dataclass(eq=False, slots=True)
class Filler:
    """What a fill needs: the tiers it reads and stores, the upstream, the replicas' lease."""

    tiers: Tiers
    upstream: Upstream
    coordinator: Coordinator
    max_body_bytes: int
    fill_timeout: float


def _from_replica(entry: Entry) -> Fetched:
    return Fetched(entry.status, None, CIMultiDict(entry.headers), entry.body, entry, None,
                   replica=True)


def _age(value: str | None) -> int:
    """The upstream's `Age` (RFC 9111 §5.1), or 0 when absent or not a sane number."""
    return (delta(value.strip()) if value is not None else None) or 0


def strong_etag(body: bytes) -> str:
    return '"sc-' + hashlib.sha256(body).hexdigest()[:32] + '"'


async def fetch(
    fl: Filler, match: Match, field: str, raw_target: str, headers: CIMultiDict[str],
    *, relay: bool = False, stale: Entry | None = None,
) -> Fetched:
    """GET the upstream (HEAD misses too, so the answer can be stored) and store it.

    Across replicas, only the lease holder goes upstream; the others wait to be woken
    and read what it stored, or fetch for themselves when the lease runs out. With a
    `stale` entry that has validators, the GET is conditional (see revalidation.py).
    """
    prefix = match.rule.key_prefix
    claim = await fl.coordinator.claim(match.key, field, prefix)
    if claim.lease is None:
        woken = await fl.coordinator.wait(claim)
        entry = await lookup(fl.tiers, match, field)
        if entry is not None and entry.remaining(fl.tiers.clock(), match.rule.ttl) > 0:
            fl.tiers.metrics.coalesced.labels(prefix, "replica").inc()
            return _from_replica(entry)
        fl.tiers.metrics.coalesced.labels(
            prefix, "replica-woken-empty" if woken else "replica-timeout").inc()
    lease = claim.lease
    try:
        fetched = await _fetch_upstream(fl, match, field, raw_target, headers, relay, lease,
                                        stale)
    finally:
        if lease is not None:  # not released with the store (nothing stored, or it failed)
            await fl.coordinator.release(lease, match.key, field, prefix)
    if fetched.entry is not None and (lease is None or lease.token is None):
        # Stored without a lease message: the other replicas' near tiers still hear of it.
        await fl.coordinator.filled(match.key, field, prefix)
    return fetched


async def _fetch_upstream(
    fl: Filler, match: Match, field: str, raw_target: str, headers: CIMultiDict[str],
    relay: bool, lease: Lease | None = None, stale: Entry | None = None,
) -> Fetched:
    validators = conditional_headers(stale) if stale is not None else []
    if validators:
        headers = headers.copy()
        headers.extend(validators)
    try:
        return await _fill(fl, match, field, raw_target, headers, relay, lease,
                           stale if validators else None, had_copy=stale is not None)
    except Exception:  # an upstream failure (a cancellation is not one)
        if validators:
            fl.tiers.metrics.revalidations.labels(match.rule.key_prefix, "error").inc()
        raise


async def _fill(
    fl: Filler, match: Match, field: str, raw_target: str, headers: CIMultiDict[str],
    relay: bool, lease: Lease | None, stale: Entry | None, *, had_copy: bool = False,
) -> Fetched:
    """One upstream GET (conditional when `stale` is given) and its storing.

    `had_copy`: an expired copy of this variant exists; a final answer that replaces it
    without being stored (a 404, a 200 with no-store...) erases it, so it is never served
    again as stale.
    """
    cap = fl.max_body_bytes
    start = time.perf_counter()
    ticket = fl.tiers.invalidator.begin(match.key)
    epoch = fl.tiers.near.epoch if fl.tiers.near is not None else 0
    try:
        try:
            # One deadline for the whole fill: a drip-feeding upstream cannot hold it open.
            async with asyncio.timeout(fl.fill_timeout):
                up = await fl.upstream.open("GET", raw_target, headers)
                read: Fetched | _Read | None = None
                try:
                    read = await _read(fl, match, up, cap, start, relay)
                finally:
                    if not isinstance(read, Fetched) or read.handover is None:
                        up.release()
        except TimeoutError:
            raise UpstreamTimeout("upstream fill exceeded UPSTREAM_FILL_TIMEOUT_S") from None
        prefix = match.rule.key_prefix
        status_read = read.status if isinstance(read, Fetched) else read[0] if read else 0
        if stale is None and status_read == 304:
            # Only a conditional request may be answered 304, and this fill sent none.
            _release(read)
            raise UpstreamUnavailable("upstream answered 304 to an unconditional GET")
        if isinstance(read, Fetched):
            if stale is not None:
                fl.tiers.metrics.revalidations.labels(prefix, _result(read.status)).inc()
                if read.status == 304:
                    # Confirmed, but the 304 itself is unusable (bad header, overflow...):
                    # the caller gets the stored body, and nothing is updated.
                    _release(read)
                    return Fetched(stale.status, "OK", CIMultiDict(stale.headers), stale.body,
                                   None, read.not_stored, revalidated=True)
            if had_copy and supersedes(read.status):
                await _erase_copy(fl, match, field)
            return read
        assert read is not None
        status, reason, received, out_headers, body = read
        raw_headers: CIMultiDict[str] | CIMultiDictProxy[str] = received
        age = _age(raw_headers.get("Age"))
        revalidated = False
        if stale is not None:
            fl.tiers.metrics.revalidations.labels(prefix, _result(status)).inc()
            if status == 304:
                confirmed = on_not_modified(stale, raw_headers,
                                            honours_origin=match.rule.honours_origin,
                                            keyed=match.rule.vary)
                if isinstance(confirmed, Refetch):
                    return await _fill(fl, match, field, raw_target,
                                       _unconditional(headers), relay, lease, None,
                                       had_copy=had_copy)
                status, reason, body, revalidated = stale.status, "OK", stale.body, True
                raw_headers, out_headers = confirmed.headers, client_headers(confirmed.headers)
                if confirmed.forbidden is not None:  # the copy it confirmed goes too
                    await _erase_copy(fl, match, field)
                    return Fetched(status, reason, out_headers, body, None,
                                   confirmed.forbidden, revalidated=True)
        if match.rule.honours_origin:  # RFC 9111 §4.2.3: its Date counts, not only its Age
            age = max(age, apparent_age(raw_headers, fl.tiers.clock()))
        verdict = on_response(status, raw_headers, age=age, rule=match.rule, had_copy=had_copy)
        if verdict is None:
            if "ETag" not in out_headers:
                out_headers["ETag"] = strong_etag(body)
            if "Date" not in out_headers:
                # RFC 9110 §6.6.1: a cache records when a Date-less response was received.
                out_headers["Date"] = formatdate(fl.tiers.clock(), usegmt=True)
            kept = on_lifetime(out_headers, age=age, rule=match.rule, had_copy=had_copy)
            verdict = kept if isinstance(kept, NotStored) else None
            life = kept.life if isinstance(kept, Store) else None
        if verdict is not None:
            if verdict.erase:  # gone, no longer storable, or no longer the caller's
                await _erase_copy(fl, match, field)
            return Fetched(status, reason, out_headers, body, None, verdict.reason,
                           revalidated=revalidated)
        entry = Entry(
            status=status,
            headers=tuple((k, v) for k, v in out_headers.items()
                          if k.lower() not in COMPUTED_PER_ANSWER),
            body=body, stored_at=fl.tiers.clock(), ttl=match.rule.ttl,
            initial_age=age,
            fresh_for=None if life is None else life.fresh,
            while_revalidate=None if life is None else life.while_revalidate,
            if_error=None if life is None else life.if_error,
            must_revalidate=life is not None and life.revalidate,
        )
        if ticket.poisoned or fl.tiers.invalidator.pending(match.key):
            # Older than a write: the leader may answer with it, nobody else may reuse it.
            return Fetched(status, reason, out_headers, body, None, "invalidated")
        keep = match.rule.ttl + match.rule.stale.keep
        # The lease release and its wake-up ride in the store's round trip.
        release = fl.coordinator.release_with(lease, match.key, field) if lease else None
        stored = await fl.tiers.cache.put(
            match.key, field, fl.tiers.codec.seal(match.key, field, entry.encode()), keep, prefix,
            release,
        )
        if stored and release is not None:
            assert lease is not None
            lease.released = True  # the caller's `finally` has nothing left to do
        if stored and ticket.poisoned:
            # A write landed while we were storing: take our copy back out.
            if not await fl.tiers.cache.drop_field(match.key, field, prefix):
                fl.tiers.invalidator.defer((match.key,))
            return Fetched(status, reason, out_headers, body, None, "invalidated")
        if stored:
            fl.tiers.invalidator.stored(match.key)
            if fl.tiers.near is not None:
                fl.tiers.near.put(match.key, field, entry, keep, epoch)
        return Fetched(status, reason, out_headers, body, entry, None if stored else "cache-error",
                       revalidated=revalidated)
    finally:
        fl.tiers.invalidator.end(match.key, ticket)


_Read = tuple[int, str | None, CIMultiDictProxy[str], CIMultiDict[str], bytes]


async def _erase_copy(fl: Filler, match: Match, field: str) -> None:
    """This variant's stored copy is wrong now: out of Redis and every near tier."""
    prefix = match.rule.key_prefix
    if fl.tiers.near is not None:
        fl.tiers.near.evict_field(match.key, field)
    await fl.tiers.cache.drop_field(match.key, field, prefix)
    await fl.coordinator.filled(match.key, field, prefix)


def _release(read: Fetched | _Read | None) -> None:
    if isinstance(read, Fetched) and read.handover is not None:
        read.handover.release()


def _result(status: int) -> str:
    """The revalidations metric's bounded result label."""
    return "304" if status == 304 else "200" if status == 200 else "error" if status >= 500 \
        else "other"


def _unconditional(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    out = headers.copy()
    out.popall("If-None-Match", None)
    out.popall("If-Modified-Since", None)
    return out


async def _read(
    fl: Filler, match: Match, up: aiohttp.ClientResponse, cap: int, start: float,
    relay: bool,
) -> Fetched | _Read:
    """The whole body, or a Fetched that ends the fill (not relayable, oversized)."""
    fl.tiers.metrics.upstream.labels(match.rule.name).observe(time.perf_counter() - start)
    if not 200 <= up.status <= 599:
        raise UpstreamUnavailable("upstream sent a status a proxy cannot relay")
    if has_unsendable_value(up.headers):  # aiohttp would refuse to send the answer
        raise UpstreamUnavailable("upstream sent a header a proxy cannot relay")
    out_headers = client_headers(up.headers)
    declared = up.headers.get("Content-Length", "")
    body = b""
    if not (declared.isdigit() and int(declared) > cap):
        body, complete = await read_capped(up, cap)
        if complete:
            if overflowed(up):
                # More bytes than its Content-Length: relay what it declared, never store.
                _warn.warn("overflow", "upstream sent more body than its Content-Length; "
                           "relayed the declared bytes, not stored, connection dropped")
                return Fetched(up.status, up.reason, out_headers, body, None,
                               "upstream-overflow")
            if _unframed(up):
                # Delimited by the close only: a connection cut short looks complete.
                return Fetched(up.status, up.reason, out_headers, body, None, "unframed")
            if has_undecodable_value(up.headers):
                # Bytes that are not UTF-8 would be stored altered: relay, never store.
                return Fetched(up.status, up.reason, out_headers, body, None, "bad-header")
            return up.status, up.reason, up.headers, out_headers, body
    # Too large to store: the caller that started the fill streams the rest of this very
    # response (one upstream request); anyone else forwards on their own.
    handover = Handover(up) if relay else None
    return Fetched(up.status, up.reason, out_headers, body, None, OVERSIZED, True,
                   handover=handover)


def _unframed(up: aiohttp.ClientResponse) -> bool:
    if up.status in (204, 304) or up.method == "HEAD" or "Content-Length" in up.headers:
        return False
    return "chunked" not in up.headers.get("Transfer-Encoding", "").lower()
