"""The decision core, row by row (sidecar/decisions.py)."""

from __future__ import annotations

import pytest

from sidecar.decisions import Fresh, Miss, ServeStale, on_lookup, stale_if_error, supersedes
from sidecar.entry import Entry
from sidecar.freshness import PLAIN, Asked
from sidecar.rules import Stale

STALE = Stale(while_revalidate=30, if_error=900, max=900)
NOW = 10_000.0


def _entry(stored_ago: float, *, fresh_for: int | None = None, swr: int | None = None,
           sie: int | None = None, must_revalidate: bool = False) -> Entry:
    return Entry(status=200, headers=(("ETag", '"v1"'),), body=b"{}",
                 stored_at=NOW - stored_ago, ttl=600, fresh_for=fresh_for,
                 while_revalidate=swr, if_error=sie, must_revalidate=must_revalidate)


@pytest.mark.parametrize(("entry", "terms", "draining", "expected"), [
    # §4.2: fresh under the rule's TTL (mode: ttl) ...
    (_entry(10), PLAIN, False, Fresh),
    # ... and under the origin's lifetime (mode: rfc9111).
    (_entry(10, fresh_for=5), PLAIN, False, ServeStale),
    (_entry(100, fresh_for=5), PLAIN, False, Miss),
    # RFC 5861 §3: inside stale-while-revalidate, one background refresh ...
    (_entry(610), PLAIN, False, ServeStale),
    # ... but not while draining, not past the window, not with must-revalidate.
    (_entry(610), PLAIN, True, Miss),
    (_entry(631), PLAIN, False, Miss),
    (_entry(20, fresh_for=10, swr=5), PLAIN, False, Miss),  # the origin's 5 s, not 30
    (_entry(15, fresh_for=10, swr=0, must_revalidate=True), PLAIN, False, Miss),
    # §5.2.1: the request's own terms.
    (_entry(50), Asked(max_age=20), False, Miss),
    (_entry(590), Asked(min_fresh=30), False, Miss),
    (_entry(700), Asked(max_stale=-1), False, ServeStale),
    (_entry(700), Asked(max_stale=50), False, Miss),
    (None, PLAIN, False, Miss),
])
def test_on_lookup(entry: Entry | None, terms: Asked, draining: bool, expected: type) -> None:
    looked = on_lookup(entry, now=NOW, ttl=600, stale=STALE, terms=terms,
                       plain=terms is PLAIN, draining=draining)
    assert isinstance(looked, expected)
    if isinstance(looked, ServeStale):
        assert looked.refresh == (terms is PLAIN)
    if isinstance(looked, Miss):
        assert looked.stale is entry  # the copy to revalidate, or to fall back on


def test_a_hot_reloaded_ttl_applies_to_what_is_stored() -> None:
    assert isinstance(on_lookup(_entry(100), now=NOW, ttl=60, stale=Stale(), terms=PLAIN,
                                plain=True, draining=False), Miss)


@pytest.mark.parametrize(("entry", "written", "expected"), [
    (_entry(700), False, True),           # inside if_error (900 s past the TTL)
    (_entry(600 + 901), False, False),    # past it
    (_entry(700), True, False),           # a write since the copy was read
    (_entry(20, fresh_for=10, sie=5), False, False),  # the origin's 5 s
    (None, False, False),
])
def test_stale_if_error(entry: Entry | None, written: bool, expected: bool) -> None:
    assert stale_if_error(entry, now=NOW, ttl=600, stale=STALE, written=written) is expected


@pytest.mark.parametrize(("status", "expected"), [
    (200, True), (301, True), (404, True), (410, True), (401, True),
    (304, False), (408, False), (429, False), (500, False), (503, False),
])
def test_supersedes(status: int, expected: bool) -> None:
    assert supersedes(status) is expected
