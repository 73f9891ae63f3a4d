"""The decision core, row by row (sidecar/decisions.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from multidict import CIMultiDict

from sidecar.decisions import (
    Forward,
    Fresh,
    Lookup,
    Miss,
    NotStored,
    Refetch,
    Refresh,
    Refuse,
    ServeStale,
    Store,
    Write,
    on_lifetime,
    on_lookup,
    on_not_modified,
    on_request,
    on_response,
    stale_if_error,
    supersedes,
)
from sidecar.entry import Entry
from sidecar.freshness import PLAIN, Asked
from sidecar.rules import Rule, Stale, load_rules

ROUTES = Path(__file__).resolve().parents[2] / "config" / "routes.yaml"

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
    # max-stale: within the stale window only (and refreshed), never past it.
    (_entry(620), Asked(max_stale=-1), False, ServeStale),
    (_entry(700), Asked(max_stale=-1), False, Miss),
    (_entry(620), Asked(max_stale=5), False, Miss),
    (None, PLAIN, False, Miss),
])
def test_on_lookup(entry: Entry | None, terms: Asked, draining: bool, expected: type) -> None:
    looked = on_lookup(entry, now=NOW, ttl=600, stale=STALE, terms=terms,
                       plain=terms is PLAIN, draining=draining)
    assert isinstance(looked, expected)
    if isinstance(looked, ServeStale):
        assert looked.asked == (terms is not PLAIN)
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


def _rule(mode: str = "ttl") -> Rule:
    rule = load_rules(ROUTES, {}).rules[0]
    return replace(rule, mode=mode)


@pytest.mark.parametrize(("status", "headers", "age", "had_copy", "expected"), [
    (200, [], 0, False, None),
    (200, [], 600, True, NotStored("too-old", erase=True)),  # §4.2.3
    (200, [("Cache-Control", "no-store")], 0, True, NotStored("response-no-store", True)),
    (200, [("Cache-Control", "no-store")], 0, False, NotStored("response-no-store", False)),
    (200, [("Set-Cookie", "s=1")], 0, True, NotStored("set-cookie", True)),
    (404, [], 0, True, NotStored("status", True)),   # the origin says it is gone
    (404, [], 0, False, NotStored("status", False)),
    (403, [], 0, False, NotStored("status", True)),  # no longer this caller's, ever
    (503, [], 0, True, NotStored("status", False)),  # left for stale-if-error
    (429, [], 0, True, NotStored("status", False)),
])
def test_on_response(status: int, headers: list[tuple[str, str]], age: int, had_copy: bool,
                     expected: NotStored | None) -> None:
    assert on_response(status, CIMultiDict(headers), age=age, rule=_rule(),
                       had_copy=had_copy) == expected


def test_no_cache_is_storable_only_when_the_rule_honours_the_origin() -> None:
    no_cache = CIMultiDict([("Cache-Control", "no-cache"), ("ETag", '"v1"')])
    assert on_response(200, no_cache, age=0, rule=_rule(), had_copy=False) == NotStored(
        "response-no-cache", False)
    assert on_response(200, no_cache, age=0, rule=_rule("rfc9111"), had_copy=False) is None
    kept = on_lifetime(no_cache, age=0, rule=_rule("rfc9111"), had_copy=False)
    assert isinstance(kept, Store) and kept.life is not None and kept.life.fresh == 0


def test_a_response_stale_on_arrival_is_kept_only_with_a_validator() -> None:
    bare = CIMultiDict([("Cache-Control", "max-age=0")])
    assert on_lifetime(bare, age=0, rule=_rule("rfc9111"), had_copy=True) == NotStored(
        "no-freshness", True)
    assert on_lifetime(bare, age=0, rule=_rule(), had_copy=True) == Store(None)


def test_on_not_modified() -> None:
    stale = _entry(700)
    assert isinstance(on_not_modified(stale, CIMultiDict([("ETag", '"v2"')]),
                                      honours_origin=False), Refetch)
    refreshed = on_not_modified(stale, CIMultiDict([("ETag", '"v1"'), ("X-New", "1")]),
                                honours_origin=False)
    assert isinstance(refreshed, Refresh) and refreshed.forbidden is None
    assert refreshed.headers["X-New"] == "1"
    cookie = on_not_modified(stale, CIMultiDict([("Set-Cookie", "s=1")]), honours_origin=False)
    assert isinstance(cookie, Refresh) and cookie.forbidden == "set-cookie"


RULES = load_rules(ROUTES, {})


@pytest.mark.parametrize(("method", "target", "headers", "body", "enabled", "expected"), [
    ("GET", "/api/v1/patients/42", [], False, True, Lookup),
    ("HEAD", "/api/v1/patients/42", [], False, True, Lookup),
    ("GET", "http://evil/api/v1/patients/42", [], False, True, Refuse),  # absolute-form
    ("GET", "/api/v1/patients/42", [("Authorization", "tok\udcff")], False, True, Refuse),
    ("POST", "/x", [("Transfer-Encoding", "gzip, chunked")], True, True, Refuse),
    ("GET", "/api/v1/patients/42", [], False, False, Forward),  # CACHE_ENABLED=false
    ("PUT", "/api/v1/patients/42", [], True, True, Write),
    ("M-SEARCH", "/api/v1/patients/42", [], False, True, Write),  # RFC 9111 §4.4
    ("OPTIONS", "/api/v1/patients/42", [], False, True, Forward),
    ("GET", "/api/v1/other", [], False, True, Forward),
    ("GET", "/api/v1/patients/42", [("Range", "bytes=0-1")], False, True, Lookup),
    ("GET", "/api/v1/patients/42", [("Cache-Control", "no-store")], False, True, Forward),
    ("GET", "/api/v1/patients/42", [], True, True, Forward),  # a body on a GET
])
def test_on_request(method: str, target: str, headers: list[tuple[str, str]], body: bool,
                    enabled: bool, expected: type) -> None:
    routed = on_request(method, target, CIMultiDict(headers), has_body=body, rules=RULES,
                        cache_enabled=enabled)
    assert isinstance(routed, expected), routed
    if isinstance(routed, Lookup):
        assert routed.match.key == "identity:patient:42"
    if isinstance(routed, Write):
        assert "identity:patient:42" in routed.written.keys
