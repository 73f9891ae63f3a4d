"""`mode: rfc9111` freshness (RFC 9111 §4.2, §5.2; RFC 5861), table-driven."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from sidecar.freshness import PLAIN, Asked, asked, directives, lifetime

DATE = "Thu, 03 Dec 2026 12:00:00 GMT"


def _life(*headers: tuple[str, str], ttl: int = 600, swr: int = 30, sie: int = 60,
          stale_max: int = 60) -> tuple[int, int, int, bool]:
    life = lifetime(CIMultiDict(headers), rule_ttl=ttl, rule_swr=swr, rule_sie=sie,
                    stale_max=stale_max)
    return life.fresh, life.while_revalidate, life.if_error, life.revalidate


@pytest.mark.parametrize(("headers", "expected"), [
    # §4.2.1: s-maxage wins for a shared cache, then max-age, then Expires - Date.
    ([("Cache-Control", "max-age=60, s-maxage=120")], (120, 30, 60, False)),
    ([("Cache-Control", "max-age=60")], (60, 30, 60, False)),
    ([("Date", DATE), ("Expires", "Thu, 03 Dec 2026 12:00:45 GMT")], (45, 30, 60, False)),
    ([("Date", DATE), ("Expires", "0")], (0, 30, 60, False)),  # §5.3: invalid = expired
    ([("Cache-Control", "max-age=60"), ("Expires", "0")], (60, 30, 60, False)),
    # The rule's TTL is the upper bound.
    ([("Cache-Control", "max-age=86400")], (600, 30, 60, False)),
    # §4.2.2 heuristic: 10 % of Date - Last-Modified (here 1000 s).
    ([("Date", DATE), ("Last-Modified", "Thu, 03 Dec 2026 11:43:20 GMT")], (100, 30, 60, False)),
    ([], (0, 30, 60, False)),
    # Malformed arguments are ignored.
    ([("Cache-Control", "max-age=abc")], (0, 30, 60, False)),
    # Revalidate before use; no stale serving.
    ([("Cache-Control", "no-cache, max-age=60")], (0, 0, 0, True)),
    ([("Cache-Control", "max-age=60, must-revalidate")], (60, 0, 0, True)),
    ([("Cache-Control", "max-age=60, proxy-revalidate")], (60, 0, 0, True)),
    # RFC 5861 from the origin, within stale.max.
    ([("Cache-Control", "max-age=60, stale-while-revalidate=5, stale-if-error=600")],
     (60, 5, 60, False)),
])
def test_lifetime(headers: list[tuple[str, str]], expected: tuple[int, int, int, bool]) -> None:
    assert _life(*headers) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("max-age=10", Asked(max_age=10)),
    ("min-fresh=5", Asked(min_fresh=5)),
    ("max-stale", Asked(max_stale=-1)),
    ("max-stale=30", Asked(max_stale=30)),
    ("only-if-cached", Asked(only_if_cached=True)),
    ("max-age=bad", Asked()),
])
def test_request_directives(value: str, expected: Asked) -> None:
    assert asked(CIMultiDict([("Cache-Control", value)])) == expected
    assert asked(CIMultiDict()) is PLAIN


@pytest.mark.parametrize(("terms", "age", "remaining", "revalidate", "verdict"), [
    (PLAIN, 10, 5.0, False, "fresh"),
    (PLAIN, 10, 0.0, False, None),
    (PLAIN, 10, -5.0, False, None),
    (Asked(max_age=5), 10, 50.0, False, None),
    (Asked(min_fresh=60), 10, 50.0, False, None),
    (Asked(max_stale=-1), 100, -90.0, False, "stale"),
    (Asked(max_stale=30), 100, -40.0, False, None),
    (Asked(max_stale=-1), 100, -90.0, True, None),  # must-revalidate wins over max-stale
])
def test_accepts(terms: Asked, age: int, remaining: float, revalidate: bool,
                 verdict: str | None) -> None:
    assert terms.accepts(age, remaining, revalidate) == verdict


@pytest.mark.parametrize(("values", "expected"), [
    # A quoted argument may hold commas (RFC 9110 §5.6.1, §5.6.4): one directive, not two.
    (['no-cache="Set-Cookie, X-Trace", max-age=60'],
     {"no-cache": "Set-Cookie, X-Trace", "max-age": "60"}),
    (['private="a,b"'], {"private": "a,b"}),
    (['max-age="60"'], {"max-age": "60"}),
    (['MAX-AGE=5, max-age=50'], {"max-age": "5"}),  # the first of a duplicate (§4.2.1)
    (["max-age=5", "max-age=50, public"], {"max-age": "5", "public": None}),
    ([" , ,max-age=5,, "], {"max-age": "5"}),  # empty list elements (§5.6.1)
    (['x="a\\"b"'], {"x": 'a"b'}),  # a quoted-pair
])
def test_cache_control_directives(values: list[str], expected: dict[str, str | None]) -> None:
    assert directives(CIMultiDict(("Cache-Control", v) for v in values)) == expected
