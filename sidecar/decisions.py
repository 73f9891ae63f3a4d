"""The caching decisions, pure: plain values in, one decision out.

In the style of hishel's `_core/_spec.py`: the handler (`proxy.py`) and the fill
(`fetch.py`) only carry these out, so every branch is a row in a table-driven test
(`tests/unit/test_decisions.py`). Each decision names the part of RFC 9111 (or 5861) it
implements.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.entry import Entry
from sidecar.freshness import Asked, Lifetime, lifetime
from sidecar.headers import has_undecodable_value
from sidecar.matching import Match, NoMatch, WriteTarget, match_rule, match_writes
from sidecar.policy import request_bypass_reason, response_not_storable_reason
from sidecar.revalidation import has_validator, refreshed_headers
from sidecar.rules import Rule, RuleSet, Stale

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


# RFC 9110 §9.2.1: only these are safe; every other method, extensions included, may
# change the entity, so it invalidates (RFC 9111 §4.4).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True, slots=True)
class Refuse:
    """A request the sidecar will not forward, because forwarding would alter it."""

    status: int
    code: str
    message: str
    detail: str


@dataclass(frozen=True, slots=True)
class Forward:
    """Pass it through untouched; `detail` is the RFC 9211 bypass reason, `rule` the
    matched rule's name (None: no rule)."""

    detail: str
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Write:
    """RFC 9111 §4.4: an unsafe method; after it, what it may have changed is erased."""

    written: WriteTarget


@dataclass(frozen=True, slots=True)
class Lookup:
    """A cacheable read: look up this rule's entity."""

    match: Match


Routed = Refuse | Forward | Write | Lookup


def on_request(method: str, target: str, headers: Headers, *, has_body: bool,
               rules: RuleSet, cache_enabled: bool) -> Routed:
    """What to do with a request before the cache is asked anything."""
    if not target.startswith("/"):
        return Refuse(400, "bad_request_target",
                      "Only origin-form request targets (/path?query) are accepted.",
                      "bad-target")
    if has_undecodable_value(headers):  # a credential must never be altered on the way
        return Refuse(400, "bad_header_value", "Header values must be ASCII or UTF-8.",
                      "bad-header")
    coding = headers.get("Transfer-Encoding")
    if coding is not None and coding.replace(" ", "").lower() != "chunked":
        # aiohttp removes only the chunked framing; forwarding the rest without its header
        # would hand the service a body in a coding it was not told about.
        return Refuse(501, "transfer_coding_not_supported",
                      "Only the chunked transfer coding is supported.", "transfer-coding")
    if not cache_enabled:
        return Forward("disabled")
    if method not in SAFE_METHODS:
        return Write(match_writes(rules, target))
    decision = match_rule(rules, method, target)
    if isinstance(decision, NoMatch):
        return Forward(decision.reason, decision.rule.name if decision.rule else None)
    reason = request_bypass_reason(method, headers, has_body)
    if reason is not None:
        return Forward(reason, decision.rule.name)
    return Lookup(decision)


@dataclass(frozen=True, slots=True)
class Fresh:
    """RFC 9111 §4.2: the stored response is fresh for this request; serve it."""

    remaining: float


@dataclass(frozen=True, slots=True)
class ServeStale:
    """RFC 9111 §4.2.4 / RFC 5861 §3: serve the stale copy, with one background refresh.
    `asked`: the caller's max-stale accepted it (within the same window)."""

    remaining: float
    asked: bool = False


@dataclass(frozen=True, slots=True)
class Miss:
    """Go upstream. `stale`: the expired copy, revalidated if it has validators
    (RFC 9111 §4.3.1) and the fallback for stale-if-error (RFC 5861 §4)."""

    stale: Entry | None


Looked = Fresh | ServeStale | Miss


def window(origin: int | None, rule_window: int, stale_max: int) -> int:
    """A stale window: the origin's (`mode: rfc9111`, already capped) or the rule's."""
    return min(rule_window, stale_max) if origin is None else origin


def on_lookup(entry: Entry | None, *, now: float, ttl: int, stale: Stale, terms: Asked,
              plain: bool, draining: bool) -> Looked:
    """What a lookup's result means for this request.

    `ttl` is the rule's current TTL (a hot reload applies at once); `plain`: the request
    set no freshness terms of its own (RFC 9111 §5.2.1), so stale-while-revalidate may
    answer it; `draining`: no new background work.
    """
    if entry is None:
        return Miss(None)
    remaining = entry.remaining(now, ttl)
    verdict = terms.accepts(entry.age(now), remaining, entry.must_revalidate)
    if verdict == "fresh":
        return Fresh(remaining)
    # A caller's max-stale never reaches past the window the rule (or origin) allows, and
    # still starts the refresh: a copy the service would now refuse must get its 401.
    in_window = (remaining <= 0 and not draining and -remaining <= window(
        entry.while_revalidate, stale.while_revalidate, stale.max))
    if in_window and (plain or verdict == "stale"):
        return ServeStale(remaining, asked=verdict == "stale")
    return Miss(entry)


def with_origin_terms(entry: Entry, *, ttl: int, stale: Stale) -> Entry:
    """An entry stored under `mode: ttl`, read by a rule now in `mode: rfc9111`: its
    origin's terms, computed from its stored headers (RFC 9111 §4.2.1)."""
    if entry.fresh_for is not None:
        return entry
    life = lifetime(CIMultiDict(entry.headers), rule_ttl=ttl,
                    rule_swr=stale.while_revalidate, rule_sie=stale.if_error,
                    stale_max=stale.max)
    return replace(entry, fresh_for=life.fresh, while_revalidate=life.while_revalidate,
                   if_error=life.if_error, must_revalidate=life.revalidate)


def stale_if_error(entry: Entry | None, *, now: float, ttl: int, stale: Stale,
                   written: bool) -> bool:
    """RFC 5861 §4: the copy may answer for a failed upstream, inside its window, unless
    a write through the sidecar since it was read made it wrong (`written`)."""
    if entry is None or written:
        return False
    return -entry.remaining(now, ttl) <= window(entry.if_error, stale.if_error, stale.max)


def supersedes(status: int) -> bool:
    """A final answer that replaces a stored copy (RFC 9111 §4.4 in spirit: the origin
    said something new), so a copy it does not replace in the store must be erased: not
    an error that may pass (5xx, 408, 429), and not a 304, which confirms the copy."""
    return status < 500 and status not in (304, 408, 429)


@dataclass(frozen=True, slots=True)
class Store:
    """RFC 9111 §3: keep it. `life`: the origin's terms (`mode: rfc9111`), else None and
    the rule's TTL is the policy."""

    life: Lifetime | None


@dataclass(frozen=True, slots=True)
class NotStored:
    """RFC 9111 §3 (or the rule) forbids keeping it; `reason` is the RFC 9211 detail.
    `erase`: the copy already stored for this variant is wrong now, too."""

    reason: str
    erase: bool


@dataclass(frozen=True, slots=True)
class Refresh:
    """RFC 9111 §4.3.4: a 304 confirmed the stale copy; these are its updated headers.
    `forbidden`: the 304 itself forbids storing (RFC 9211 detail); the copy is erased."""

    headers: CIMultiDict[str]
    forbidden: str | None = None


@dataclass(frozen=True, slots=True)
class Refetch:
    """RFC 9111 §4.3.4: the 304 is about another representation; fetch it whole."""


def on_not_modified(stale: Entry, received: Headers, *, honours_origin: bool,
                    keyed: tuple[str, ...] = ()) -> Refresh | Refetch:
    """A 304 to the sidecar's conditional GET for `stale`.

    Its own headers are judged for storing too (a `Connection: Set-Cookie` hides one);
    one that may not be stored erases the copy it confirmed.
    """
    merged = refreshed_headers(stale, received)
    if merged is None:
        return Refetch()
    return Refresh(merged, response_not_storable_reason(200, received,
                                                        honours_origin=honours_origin,
                                                        keyed=keyed))


def on_response(status: int, received: Headers, *, age: int, rule: Rule, had_copy: bool
                ) -> NotStored | None:
    """Whether a full response may be stored, judged on its headers as received.

    None: storable so far (its lifetime is `on_lifetime`'s). 401/403 mean the caller's
    credentials no longer open the entity: that caller's copy goes. Any other final
    answer that replaces an expired copy without being stored erases it (`supersedes`).
    """
    reason = response_not_storable_reason(status, received,
                                          honours_origin=rule.honours_origin, keyed=rule.vary)
    if reason is None and age >= rule.ttl:
        reason = "too-old"  # RFC 9111 §4.2.3: older on arrival than it may be kept
    if reason is None:
        return None
    return NotStored(reason, erase=status in (401, 403) or (had_copy and supersedes(status)))


def on_lifetime(stored: Headers, *, age: int, rule: Rule, had_copy: bool
                ) -> Store | NotStored:
    """`mode: rfc9111`: the origin's terms for a storable response (RFC 9111 §4.2.1-2),
    capped by the rule; `mode: ttl`: the rule's TTL. A response stale on arrival is kept
    only if the origin can validate it, or every use would refetch it whole."""
    if not rule.honours_origin:
        return Store(None)
    life = lifetime(stored, rule_ttl=rule.ttl, rule_swr=rule.stale.while_revalidate,
                    rule_sie=rule.stale.if_error, stale_max=rule.stale.max)
    if life.fresh <= age and not has_validator(stored):
        return NotStored("no-freshness", erase=had_copy)
    return Store(life)
