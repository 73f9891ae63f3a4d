"""The plainest hit, answered as its request is parsed: no aiohttp request, task or response.

Most of a hit's cost was aiohttp's request machinery around a few dictionary lookups: a
`BaseRequest`, a `StreamWriter`, a task per request, the handler's awaits, a response
object. A fresh copy in the near tier (in front of Redis or `memory://`) needs none of it,
so the connection (`listener.py`) asks here first and writes the bytes returned.

Only the plain case is taken, and every decision is the ordinary path's (the same pure
modules: `decisions`, `policy`, `variants`, `wire`), made before anything is counted, so a
`None` (take the ordinary path) leaves nothing to undo: an HTTP/1.1 keep-alive GET without
body, `Expect`, `Range`, `no-cache` or a validator, on a cached rule, whose caller is
known without waiting (a token's check remembered), fresh, with a one-buffer
answer (`wire.stored_block`). Everything else - misses, stale copies, 304s, HEAD, telemetry
spans, required audit lines, a drain - takes the ordinary path, which also answers anything
this one refuses. Its answer is counted, audited and logged exactly as the ordinary hit's.
"""

from __future__ import annotations

import logging
import time

from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import HttpVersion11

from sidecar.decisions import Fresh, Lookup, on_lookup, on_request, with_origin_terms
from sidecar.freshness import PLAIN, asked
from sidecar.logs import RateLimitedWarning
from sidecar.lookup import ready
from sidecar.policy import coding_acceptable, wants_refresh
from sidecar.responses import HIT, hit_status
from sidecar.runtime import Runtime
from sidecar.variants import accepted_codings, variant_field, varied_values
from sidecar.wire import stored_block, wire_bytes

log = logging.getLogger("sidecar.proxy")


class FastHits:
    """Answers plain hits for one runtime's connections (`HeaderDeadlineHandler.fast`)."""

    __slots__ = ("_failed", "_rt")

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._failed = RateLimitedWarning(log, rt.settings.warn_interval)

    def answer(self, message: RawRequestMessage, client: str | None) -> bytes | None:
        """The whole answer to `message` (which has no body), or None: the ordinary path.
        Never raises: it runs in the connection's `data_received`."""
        try:
            return self._answer(message, client)
        except Exception as exc:  # the ordinary path answers, and says what went wrong
            self._failed.warn("fast-hit", f"hit path failed ({type(exc).__name__}); "
                              "answered by the ordinary path")
            return None

    def _answer(self, message: RawRequestMessage, client: str | None) -> bytes | None:
        start = time.perf_counter()
        rt = self._rt
        tiers = rt.tiers
        if tiers is None or tiers.near is None or not tiers.near.enabled:
            return None  # nothing it could answer from: no cost on a Redis-only hit
        headers = message.headers
        if (rt.draining or rt.telemetry.enabled or message.method != "GET"
                or message.version != HttpVersion11 or message.should_close
                or message.upgrade or "Range" in headers or "Expect" in headers
                or "If-None-Match" in headers or "If-Modified-Since" in headers):
            return None
        routed = on_request("GET", message.path, headers, has_body=False, rules=rt.rules,
                            cache_enabled=True)
        if not isinstance(routed, Lookup) or wants_refresh(headers):
            return None
        match = routed.match
        rule = match.rule
        if rule.audit and rt.audit.required:
            return None  # each line written before its answer: the ordinary path's order
        caller = rt.callers.known(rule, headers)
        if caller is None:
            return None
        codings = accepted_codings(headers)
        field = variant_field(caller.credential, codings, match.query,
                              varied_values(headers, rule.vary) if rule.vary else None)
        entry = ready(tiers, match, field)
        if entry is None:
            return None
        if not coding_acceptable(entry.header("Content-Encoding"), codings):
            return None
        terms = PLAIN
        if rule.honours_origin:
            terms = asked(headers)
            entry = with_origin_terms(entry, ttl=rule.ttl, stale=rule.stale)
        now = rt.clock()
        looked = on_lookup(entry, now=now, ttl=rule.ttl, stale=rule.stale, terms=terms,
                           plain=terms is PLAIN, draining=False)
        if not isinstance(looked, Fresh):
            return None
        block = stored_block(entry)
        if block is None:
            return None
        # Decided: from here on it is answered, so counted, audited and logged.
        metrics, prefix = rt.metrics, rule.key_prefix
        request_id = rt.request_ids.take(headers)
        metrics.near_hit(prefix)
        if rule.audit and not rt.audit.write(
                rule=rule.name, key=match.key, subject=caller.subject, client=client,
                request_id=request_id, outcome=HIT, status=entry.status):
            metrics.audit_failures.inc()  # not required (above): counted, and answered
        metrics.hit(prefix)
        wire = wire_bytes(entry, block, entry.age(now), HIT, hit_status(int(looked.remaining)),
                          request_id)
        elapsed = time.perf_counter() - start
        metrics.request_time(rule.name, HIT, entry.status, elapsed)
        rt.access_log.record("GET", rule.name, HIT, entry.status, elapsed, request_id)
        return wire
