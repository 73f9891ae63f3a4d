"""`mode: rfc9111`: freshness from the origin's own headers, and request directives.

Pure functions over header values and numbers; `proxy.py` and `fetch.py` carry out what
they return. In the default `mode: ttl` none of this runs: the rule's TTL is the policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.request import parse_http_list

from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.policy import http_date

Headers = CIMultiDict[str] | CIMultiDictProxy[str]
_DELTA = re.compile(r"[0-9]+", re.ASCII)
# RFC 9111 §4.2.2: a heuristic lifetime is a fraction of the time since Last-Modified;
# 10 % is the value the RFC gives as typical (and nginx, Varnish, Squid use).
HEURISTIC_FRACTION = 0.1


def directives(headers: Headers) -> dict[str, str | None]:
    """Cache-Control as {lower-case directive: argument or None} (RFC 9111 §5.2).

    The list is split by the standard library's `urllib.request.parse_http_list` (a quoted
    argument such as `no-cache="Set-Cookie, X-Trace"` may hold commas and quoted pairs);
    quoted arguments are unquoted. A directive given twice keeps its first value (RFC 9111
    §4.2.1).
    """
    out: dict[str, str | None] = {}
    for value in headers.getall("Cache-Control", []):
        for part in parse_http_list(value):
            name, sep, arg = part.partition("=")
            name = name.strip().lower()
            if name and name not in out:
                arg = arg.strip()
                if len(arg) >= 2 and arg[0] == arg[-1] == '"':
                    arg = arg[1:-1]
                out[name] = arg if sep else None
    return out


DELTA_CAP = 2**31  # RFC 9111 §1.2.2: a larger delta-seconds is read as this


def delta(value: str | None) -> int | None:
    """A delta-seconds argument (RFC 9111 §1.2.2), or None when absent or malformed."""
    if value is None or not _DELTA.fullmatch(value):
        return None
    digits = value.lstrip("0")
    return DELTA_CAP if len(digits) > 10 else min(int(digits or "0"), DELTA_CAP)


def apparent_age(headers: Headers, received_at: float) -> int:
    """RFC 9111 §4.2.3: how old the response already was when it arrived, by its Date."""
    date = _date(headers.get("Date"))
    return 0 if date is None else max(0, int(received_at - date))


def _date(value: str | None) -> float | None:
    parsed = http_date(value)
    return None if parsed is None else parsed.timestamp()


@dataclass(frozen=True, slots=True)
class Lifetime:
    """What the origin allows for one stored response, capped by the rule."""

    fresh: int  # seconds of freshness from the response's generation (§4.2.1)
    while_revalidate: int  # stale windows (RFC 5861), already capped by the rule
    if_error: int
    revalidate: bool  # no-cache / must-revalidate / proxy-revalidate: never serve stale


def lifetime(headers: Headers, *, rule_ttl: int, rule_swr: int, rule_sie: int,
             stale_max: int) -> Lifetime:
    """RFC 9111 §4.2.1 for a shared cache: s-maxage, then max-age, then Expires - Date,
    else the §4.2.2 heuristic (a 200 with Last-Modified); the rule's TTL is the upper bound.

    The rule's stale windows stand for the out-of-band contract §4.2.4 allows; the origin's
    own `stale-while-revalidate` / `stale-if-error` replace them, within `stale.max`.
    """
    cc = directives(headers)
    fresh: int | None = None
    for name in ("s-maxage", "max-age"):
        if name in cc:
            # §4.2.1: an invalid freshness value is best treated as already stale.
            fresh = delta(cc[name])
            fresh = 0 if fresh is None else fresh
            break
    if fresh is None and "Expires" in headers:
        expires, date = _date(headers.get("Expires")), _date(headers.get("Date"))
        # §5.3: an invalid Expires (e.g. "0") means already expired.
        fresh = 0 if expires is None or date is None else max(0, int(expires - date))
    if fresh is None:
        modified, date = _date(headers.get("Last-Modified")), _date(headers.get("Date"))
        fresh = (int(max(0.0, date - modified) * HEURISTIC_FRACTION)
                 if modified is not None and date is not None else 0)
    revalidate = any(d in cc for d in ("no-cache", "must-revalidate", "proxy-revalidate"))
    if "no-cache" in cc:
        fresh = 0  # §5.2.2.4: stored, but validated before every use
    swr, sie = delta(cc.get("stale-while-revalidate")), delta(cc.get("stale-if-error"))
    return Lifetime(
        fresh=min(fresh, rule_ttl),
        while_revalidate=0 if revalidate else min(rule_swr if swr is None else swr, stale_max),
        if_error=0 if revalidate else min(rule_sie if sie is None else sie, stale_max),
        revalidate=revalidate,
    )


@dataclass(frozen=True, slots=True)
class Asked:
    """The request's own freshness terms (RFC 9111 §5.2.1)."""

    max_age: int | None = None
    min_fresh: int = 0
    max_stale: int | None = None  # seconds of staleness accepted; -1: any
    only_if_cached: bool = False

    def accepts(self, age: int, remaining: float, revalidate: bool) -> str | None:
        """"fresh", "stale" (accepted by max-stale), or None: not usable for this request."""
        if self.max_age is not None and age > self.max_age:
            return None
        if remaining >= self.min_fresh and remaining > 0:
            return "fresh"
        if remaining <= 0 and not revalidate and self.max_stale is not None and (
                self.max_stale < 0 or -remaining <= self.max_stale):
            return "stale"
        return None


PLAIN = Asked()


def asked(headers: Headers) -> Asked:
    """The request's directives; a malformed argument is ignored, as if absent."""
    if "Cache-Control" not in headers:
        return PLAIN
    cc = directives(headers)
    max_stale: int | None = None
    if "max-stale" in cc:
        max_stale = -1 if cc["max-stale"] is None else delta(cc["max-stale"])
    return Asked(max_age=delta(cc.get("max-age")), min_fresh=delta(cc.get("min-fresh")) or 0,
                 max_stale=max_stale, only_if_cached="only-if-cached" in cc)
