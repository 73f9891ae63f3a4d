"""The request handler: a short sequence of decisions, each made by a pure module.

    write?      -> forward, then invalidate the entity on 2xx        (invalidation)
    cacheable?  -> no: forward untouched, X-Cache: BYPASS             (matching, policy)
    lookup      -> fresh: HIT; stale within SWR: STALE + refresh      (guarded_store)
    miss        -> one shared upstream GET per variant, store, answer (flights, fetch)
                   upstream failed and a stale copy is in window: STALE (stale-if-error)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiohttp import hdrs, web
from opentelemetry.trace import SpanKind

from sidecar.decisions import (
    Forward,
    Fresh,
    Lookup,
    Miss,
    Refuse,
    ServeStale,
    on_lookup,
    on_request,
    stale_if_error,
    with_origin_terms,
)
from sidecar.entry import Entry
from sidecar.errors import UpstreamError
from sidecar.fetch import OVERSIZED, fetch
from sidecar.fetched import Fetched
from sidecar.forward import forward, forwarded_headers, relay, upstream_failure
from sidecar.freshness import PLAIN, asked
from sidecar.listener import Handler
from sidecar.lookup import lookup
from sidecar.matching import Match
from sidecar.metrics import NO_RULE
from sidecar.policy import (
    coding_acceptable,
    not_modified,
    wants_refresh,
)
from sidecar.ranges import if_range_holds, single_range
from sidecar.request_ids import REQUEST_ID, REQUEST_ID_HEADER
from sidecar.responses import (
    BYPASS,
    HIT,
    MISS,
    STALE,
    cache_status,
    error,
    hit_status,
    label,
    replay,
    replay_range,
)
from sidecar.runtime import RUNTIME, Runtime
from sidecar.telemetry import PROPAGATOR
from sidecar.variants import accepted_codings, variant_field, varied_values
from sidecar.wire import WireResponse, eligible

log = logging.getLogger("sidecar.proxy")


@dataclass(slots=True)
class Outcome:
    """What the request-duration metric is labelled with (bounded values only)."""

    rule: str = NO_RULE
    cache: str = BYPASS


async def handle(request: web.Request) -> web.StreamResponse:
    """The app's one route (what aiohttp's router calls)."""
    return await serve(request, request.app[RUNTIME])


def direct(rt: Runtime, routed: Handler) -> Handler:
    """The proxy port's handler: every request is `serve`'s, so aiohttp's router, match
    info and signals are skipped on the hottest path. A request with `Expect` takes the
    app's path, where aiohttp answers `100-continue` (or 417)."""
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if hdrs.EXPECT in request.headers:
            return await routed(request)
        return await serve(request, rt)  # type: ignore[arg-type]  # the app's request class
    return handler


async def serve(request: web.Request, rt: Runtime) -> web.StreamResponse:
    start = time.perf_counter()
    outcome = Outcome()
    request_id = request[REQUEST_ID] = rt.request_ids.take(request.headers)
    if rt.telemetry.enabled:
        with rt.telemetry.tracer.start_as_current_span(
            f"proxy {request.method}", context=PROPAGATOR.extract(request.headers),
            kind=SpanKind.SERVER,
        ) as span:
            response = await _route(request, rt, outcome)
            span.update_name(f"{request.method} {outcome.rule}")
            span.set_attributes({
                "http.request.method": request.method, "sidecar.rule": outcome.rule,
                "sidecar.cache": outcome.cache, "http.response.status_code": response.status})
    else:
        response = await _route(request, rt, outcome)
    if not response.prepared and type(response) is not WireResponse:
        response.headers[REQUEST_ID_HEADER] = request_id  # a wire answer carries it already
    elapsed = time.perf_counter() - start
    rt.metrics.request_time(outcome.rule, outcome.cache, response.status, elapsed)
    rt.access_log.record(request.method, outcome.rule, outcome.cache, response.status, elapsed,
                         request_id)
    return response


async def _route(request: web.Request, rt: Runtime, outcome: Outcome) -> web.StreamResponse:
    routed = on_request(request.method, request.raw_path, request.headers,
                        has_body=request.body_exists, rules=rt.rules,  # one snapshot
                        cache_enabled=rt.cache is not None)
    if isinstance(routed, Lookup):
        outcome.rule = routed.match.rule.name
        return await _cached(request, rt, routed.match, outcome)
    if isinstance(routed, Refuse):
        rt.metrics.bypass.labels(routed.detail).inc()
        return error(routed.status, routed.code, routed.message, BYPASS, routed.detail)
    if isinstance(routed, Forward):
        outcome.rule = routed.rule or NO_RULE
        rt.metrics.bypass.labels(routed.detail).inc()
        return await forward(request, rt.passage, rule=outcome.rule, x_cache=BYPASS,
                             detail=routed.detail)
    written, invalidator = routed.written, rt.invalidator

    async def invalidate(status: int | None) -> None:
        # Anything but a definite refusal (4xx) may have changed the entity: a 5xx or a
        # lost answer can come after the commit. Erasing too much only costs a miss.
        if invalidator is None or (status is not None and 400 <= status < 500):
            return
        await invalidator.invalidate(written.keys, "write")
        # An id the sidecar cannot read: the service refuses those (422), so only a
        # success or a failure that may hide one erases the whole prefix, not a 3xx.
        if written.unsure and (status is None or status < 300 or status >= 500):
            await invalidator.invalidate_prefixes(written.unsure)

    return await forward(request, rt.passage, rule=NO_RULE, x_cache=BYPASS, detail="method",
                         on_headers=invalidate if written else None)


async def _cached(
    request: web.Request, rt: Runtime, match: Match, outcome: Outcome
) -> web.StreamResponse:
    rule, headers = match.rule, request.headers
    prefix = rule.key_prefix
    codings = accepted_codings(headers)
    caller = await rt.callers.identify(rule, headers)
    field = variant_field(caller.credential, codings, match.query,
                          varied_values(headers, rule.vary) if rule.vary else None)
    subject = caller.subject
    head = request.method == "HEAD"
    refresh = wants_refresh(headers)
    terms = asked(headers) if rule.honours_origin else PLAIN  # RFC 9111 §5.2.1
    assert rt.tiers is not None  # a cached rule is only routed here with the cache on
    seen = time.time()  # a write after this makes the copy read here unservable
    entry = None if refresh else await lookup(rt.tiers, match, field)
    if entry is not None and not coding_acceptable(entry.header("Content-Encoding"), codings):
        entry = None
    if entry is not None and rule.honours_origin and entry.fresh_for is None:
        entry = with_origin_terms(entry, ttl=rule.ttl, stale=rule.stale)  # stored in ttl mode
    now = rt.clock()
    looked = on_lookup(entry, now=now, ttl=rule.ttl, stale=rule.stale, terms=terms,
                       plain=terms is PLAIN, draining=rt.draining)
    ranged = request.method == "GET" and "Range" in headers  # HEAD ignores Range
    if ranged and not (isinstance(looked, Fresh) and entry is not None and entry.status == 200):
        return await _range_passes(request, rt, rule.name)
    if isinstance(looked, Fresh):
        assert entry is not None
        unchanged = _conditional(request, entry)  # RFC 9110 §13.2.2: before the Range
        if ranged and not unchanged and if_range_holds(headers.get("If-Range"), entry):
            return await _range(request, rt, match, subject, entry, looked, outcome)
        if not _audited(request, rt, match, subject, HIT, entry, unchanged):
            return await _unaudited(request, rt, outcome)
        rt.metrics.hit(prefix)
        outcome.cache = HIT
        return replay(entry, now=now, head=head, x_cache=HIT,
                      status=hit_status(int(looked.remaining)),
                      not_modified=unchanged, plain=eligible(request),
                      request_id=request[REQUEST_ID])
    if isinstance(looked, ServeStale):
        assert entry is not None
        unchanged = _conditional(request, entry)
        if _audited(request, rt, match, subject, STALE, entry, unchanged):
            return _serve_stale(request, rt, match, field, entry, looked, outcome, unchanged)
    rt.metrics.miss(prefix)
    outcome.cache = MISS
    if terms.only_if_cached:  # RFC 9111 §5.2.1.7: nothing usable, and no upstream asked
        return error(504, "not_cached", "No stored response satisfies only-if-cached.", MISS,
                     "only-if-cached")
    stale = looked.stale if isinstance(looked, Miss) else entry  # an unaudited stale copy
    return await _miss(request, rt, match, field, stale, refresh, outcome, seen, subject)


async def _range(request: web.Request, rt: Runtime, match: Match, subject: str, entry: Entry,
                 looked: Fresh, outcome: Outcome) -> web.StreamResponse:
    """One satisfiable byte range of a fresh stored 200: a 206 from the cache."""
    values = request.headers.getall("Range")
    span = single_range(values[0], len(entry.body)) if len(values) == 1 else None
    if span is None:  # several ranges, other units, past the end: the service answers
        return await _range_passes(request, rt, match.rule.name)
    if not _audited(request, rt, match, subject, HIT, entry, False, status=206):
        return await _unaudited(request, rt, outcome)
    rt.metrics.hit(match.rule.key_prefix)
    outcome.cache = HIT
    return replay_range(entry, span, now=rt.clock(), x_cache=HIT,
                        status=hit_status(int(looked.remaining)))


async def _range_passes(request: web.Request, rt: Runtime, rule: str) -> web.StreamResponse:
    """A Range the cache does not answer goes to the service untouched, as before."""
    rt.metrics.bypass.labels("range").inc()
    return await forward(request, rt.passage, rule=rule, x_cache=BYPASS, detail="range")


def _serve_stale(
    request: web.Request, rt: Runtime, match: Match, field: str, entry: Entry,
    looked: ServeStale, outcome: Outcome, unchanged: bool,
) -> web.StreamResponse:
    prefix = match.rule.key_prefix
    rt.metrics.hit(prefix)
    outcome.cache = STALE
    upstream_headers = forwarded_headers(request, rt.settings.public_origin,
                                         strip_conditionals=True)
    filler = rt.filler
    assert filler is not None
    rt.flights.background(
        (match.key, field),
        lambda: fetch(filler, match, field, request.raw_path, upstream_headers, stale=entry))
    rt.metrics.stale.labels(prefix, "max-stale" if looked.asked else "revalidating").inc()
    status = cache_status("hit", "fwd=stale", f"ttl={int(looked.remaining)}",
                          "detail=max-stale" if looked.asked else "")
    return replay(entry, now=rt.clock(), head=request.method == "HEAD", x_cache=STALE,
                  status=status, not_modified=unchanged, plain=eligible(request),
                  request_id=request[REQUEST_ID])


def _audited(request: web.Request, rt: Runtime, match: Match, subject: str, outcome: str,
             entry: Entry, unchanged: bool, status: int | None = None) -> bool:
    """Whether a cached answer may go out: audited (on an `audit: true` rule) or allowed
    without its line. A lost line is counted; `CACHE_AUDIT_REQUIRED` then refuses it."""
    if not match.rule.audit:
        return True
    if rt.audit.write(rule=match.rule.name, key=match.key, subject=subject,
                      client=request.remote, request_id=request[REQUEST_ID], outcome=outcome,
                      status=304 if unchanged else status or entry.status):
        return True
    rt.metrics.audit_failures.inc()
    return not rt.audit.required


async def _unaudited(request: web.Request, rt: Runtime, outcome: Outcome
                     ) -> web.StreamResponse:
    """The audit line of a cached read was lost and is required: the service answers."""
    rt.metrics.bypass.labels("audit-unavailable").inc()
    outcome.cache = MISS
    return await forward(request, rt.passage, rule=outcome.rule, x_cache=MISS,
                         detail="audit-unavailable")


def _conditional(request: web.Request, entry: Entry) -> bool:
    # RFC 9111 §4.3.2: without Last-Modified, If-Modified-Since is compared with the stored
    # response's Date.
    return not_modified(request.headers, entry.header("ETag"),
                        entry.header("Last-Modified") or entry.header("Date"))


def _stale_if_error(rt: Runtime, entry: Entry | None, match: Match, now: float,
                    seen: float) -> bool:
    """The copy may stand in for a failed upstream: in its window, and not written since
    it was read (a write or DELETE through the sidecar meanwhile makes it wrong)."""
    assert rt.invalidator is not None
    return stale_if_error(entry, now=now, ttl=match.rule.ttl, stale=match.rule.stale,
                          written=rt.invalidator.erased_since(match.key, seen))


async def _miss(
    request: web.Request, rt: Runtime, match: Match, field: str, stale: Entry | None,
    refresh: bool, outcome: Outcome, seen: float, subject: str,
) -> web.StreamResponse:
    rule, prefix = match.rule, match.rule.key_prefix
    upstream_headers = forwarded_headers(request, rt.settings.public_origin,
                                         strip_conditionals=True)
    target, filler = request.raw_path, rt.filler
    assert filler is not None
    future, leader = rt.flights.join(
        (match.key, field),
        lambda: fetch(filler, match, field, target, upstream_headers, relay=True, stale=stale))
    head = request.method == "HEAD"
    try:
        result = await future
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this request itself is being cancelled
        # The shared fetch was cancelled under us (drain): fetch on our own.
        return await forward(request, rt.passage, rule=rule.name, x_cache=MISS, detail="uncached")
    except UpstreamError as exc:
        now = rt.clock()
        if stale is not None and _stale_if_error(rt, stale, match, now, seen) and (
                answer := _serve_stale_on_error(request, rt, match, stale, now, outcome,
                                                subject)) is not None:
            return answer
        return upstream_failure(rt.metrics, rule.name, exc, MISS)
    now = rt.clock()
    if result.status >= 500 and stale is not None and _stale_if_error(
            rt, stale, match, now, seen) and (
            answer := _serve_stale_on_error(request, rt, match, stale, now, outcome,
                                            subject)) is not None:
        return answer
    if result.oversized and leader:
        rt.metrics.not_stored.labels(prefix, OVERSIZED).inc()
        up = result.handover.take() if result.handover is not None else None
        if up is not None:  # the rest of the fill's own response: one upstream request
            try:
                return await relay(request, up, MISS, OVERSIZED, head=result.body)
            finally:
                up.release()
    if result.oversized or (not leader and result.entry is None):
        # Not shareable: this caller gets its own upstream exchange.
        return await forward(request, rt.passage, rule=rule.name, x_cache=MISS,
                             detail=result.not_stored or "uncached")
    if not leader or result.replica:
        # Another request's fetch (here or in another replica) answers this one.
        assert result.entry is not None
        unchanged = _conditional(request, result.entry)
        # The service saw another request's fetch, not this one: audited as a cached read.
        if not _audited(request, rt, match, subject, "COLLAPSED", result.entry, unchanged):
            return await _unaudited(request, rt, outcome)
        if not leader:
            rt.metrics.coalesced.labels(prefix, "process").inc()
        return replay(result.entry, now=now, head=head, x_cache=MISS,
                      status=cache_status("fwd=miss", "collapsed"), not_modified=unchanged)
    if result.not_stored is not None and result.status == 200:
        rt.metrics.not_stored.labels(prefix, result.not_stored).inc()
    # RFC 9211 §2.2: a stale entry the origin confirmed is `fwd=stale` with its 304.
    params = (["fwd=stale", "fwd-status=304"] if result.revalidated else
              ["fwd=request" if refresh else "fwd=miss", f"fwd-status={result.status}"])
    params.append("stored" if result.not_stored is None else f"detail={result.not_stored}")
    return _fresh_response(request, result, cache_status(*params), head)


def _serve_stale_on_error(
    request: web.Request, rt: Runtime, match: Match, stale: Entry, now: float,
    outcome: Outcome, subject: str,
) -> web.StreamResponse | None:
    # Already counted as a miss (the cache had nothing fresh); the stale counter says why
    # it was answered anyway, and the duration metric and access log say STALE, as the
    # client's X-Cache does.
    unchanged = _conditional(request, stale)
    if not _audited(request, rt, match, subject, STALE, stale, unchanged):
        return None  # the copy cannot be audited: the service's failure stands
    rt.metrics.stale.labels(match.rule.key_prefix, "error").inc()
    outcome.cache = STALE
    return replay(stale, now=now, head=request.method == "HEAD", x_cache=STALE,
                  status=cache_status("hit", "fwd=stale", "detail=upstream-error"),
                  not_modified=unchanged)


def _fresh_response(
    request: web.Request, result: Fetched, status: str, head: bool
) -> web.Response:
    headers = result.headers.copy()
    label(headers, MISS, status)
    if result.status == 200 and not_modified(
        request.headers, headers.get("ETag"), headers.get("Last-Modified") or headers.get("Date")
    ):
        for name in ("Content-Type", "Content-Encoding", "Content-Language"):
            headers.popall(name, None)
        return web.Response(status=304, headers=headers)
    response = web.Response(status=result.status, reason=result.reason, headers=headers,
                            body=None if head else result.body)
    if head:
        response.headers["Content-Length"] = str(len(result.body))
    return response
