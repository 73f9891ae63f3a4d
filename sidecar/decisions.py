"""The caching decisions, pure: plain values in, one decision out.

In the style of hishel's `_core/_spec.py`: the handler (`proxy.py`) and the fill
(`fetch.py`) only carry these out, so every branch is a row in a table-driven test
(`tests/unit/test_decisions.py`). Each decision names the part of RFC 9111 (or 5861) it
implements.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.entry import Entry
from sidecar.freshness import Asked
from sidecar.rules import Stale


@dataclass(frozen=True, slots=True)
class Fresh:
    """RFC 9111 §4.2: the stored response is fresh for this request; serve it."""

    remaining: float


@dataclass(frozen=True, slots=True)
class ServeStale:
    """RFC 9111 §4.2.4: serve the stale copy. `refresh`: RFC 5861 §3 stale-while-
    revalidate, one background refresh; otherwise the caller's max-stale accepted it."""

    remaining: float
    refresh: bool


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
    if verdict == "stale":
        return ServeStale(remaining, refresh=False)
    if (plain and remaining <= 0 and not draining
            and -remaining <= window(entry.while_revalidate, stale.while_revalidate,
                                     stale.max)):
        return ServeStale(remaining, refresh=True)
    return Miss(entry)


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
