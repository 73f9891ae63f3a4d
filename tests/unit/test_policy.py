"""Cache decisions over headers: bypass, refresh, storability, coding, conditional requests."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from sidecar.policy import (
    coding_acceptable,
    not_modified,
    request_bypass_reason,
    response_not_storable_reason,
    wants_refresh,
)


def h(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


# -- requests -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_plain_reads_may_use_the_cache(method: str) -> None:
    headers = h(("Accept", "application/json"), ("Authorization", "Bearer t"),
                ("Cache-Control", "max-age=0"))
    assert request_bypass_reason(method, headers, has_body=False) is None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get"])
def test_other_methods_bypass(method: str) -> None:
    assert request_bypass_reason(method, h(), has_body=False) == "method"


@pytest.mark.parametrize("headers, reason", [
    (h(("Upgrade", "websocket")), "upgrade"),
    (h(("Cache-Control", "no-store")), "request-no-store"),
    (h(("Cache-Control", "max-age=10, NO-STORE")), "request-no-store"),
    (h(("Cache-Control", "max-age=10"), ("Cache-Control", "no-store")), "request-no-store"),
])
def test_request_headers_that_bypass(headers: CIMultiDict[str], reason: str) -> None:
    assert request_bypass_reason("GET", headers, has_body=False) == reason


def test_a_range_is_looked_up_not_bypassed() -> None:
    """Answered 206 from a stored 200 when it can be (proxy, ranges.py); else forwarded."""
    assert request_bypass_reason("GET", h(("Range", "bytes=0-10")), has_body=False) is None


def test_request_with_a_body_bypasses() -> None:
    assert request_bypass_reason("GET", h(), has_body=True) == "request-body"


@pytest.mark.parametrize("headers, refresh", [
    (h(), False),
    (h(("Cache-Control", "no-cache")), True),
    (h(("Cache-Control", "max-age=5, No-Cache")), True),
    (h(("Cache-Control", "max-age=0")), False),
    (h(("Cache-Control", "no-store")), False),
    (h(("Pragma", "no-cache")), True),
    # Cache-Control, when present, wins over the HTTP/1.0 Pragma.
    (h(("Pragma", "no-cache"), ("Cache-Control", "max-age=5")), False),
])
def test_wants_refresh(headers: CIMultiDict[str], refresh: bool) -> None:
    assert wants_refresh(headers) is refresh


# -- responses ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [201, 203, 204, 206, 301, 302, 304, 404, 410, 500, 503])
def test_non_200_is_not_stored(status: int) -> None:
    assert response_not_storable_reason(status, h()) == "status"


@pytest.mark.parametrize("headers, reason", [
    (h(("Set-Cookie", "session=abc")), "set-cookie"),
    (h(("set-cookie2", "a=b")), "set-cookie"),
    (h(("Cache-Control", "no-store")), "response-no-store"),
    (h(("Cache-Control", "private")), "response-private"),
    (h(("Cache-Control", "no-cache")), "response-no-cache"),
    (h(("Cache-Control", "max-age=60, private")), "response-private"),
    (h(("Cache-Control", 'private="Set-Cookie", max-age=60')), "response-private"),
    (h(("Cache-Control", "max-age=60"), ("Cache-Control", "No-Store")), "response-no-store"),
    (h(("Vary", "*")), "vary-star"),
    (h(("Vary", "Accept-Encoding, *")), "vary-star"),
    (h(("Vary", "Accept-Language")), "vary"),
    (h(("Vary", "Accept-Encoding"), ("Vary", "Origin")), "vary"),
    (h(("Content-Range", "bytes 0-9/100")), "partial"),
    (h(("Content-Encoding", "gzip, br")), "content-encoding"),
])
def test_responses_that_are_not_stored(headers: CIMultiDict[str], reason: str) -> None:
    assert response_not_storable_reason(200, headers) == reason


@pytest.mark.parametrize("headers", [
    h(),
    h(("Content-Type", "application/json"), ("ETag", '"v1"')),
    h(("Vary", "Accept-Encoding")),
    h(("Vary", "accept-encoding, Authorization, Cookie")),
    h(("Vary", "")),
    h(("Cache-Control", "max-age=60, public")),
    h(("Cache-Control", "must-revalidate")),
    h(("Content-Encoding", "gzip")),
])
def test_storable_responses(headers: CIMultiDict[str]) -> None:
    assert response_not_storable_reason(200, headers) is None


@pytest.mark.parametrize("encoding, accepted, ok", [
    (None, frozenset(), True),
    ("identity", frozenset(), True),
    (" Identity ", frozenset(), True),
    ("gzip", frozenset({"gzip"}), True),
    ("GZIP", frozenset({"gzip", "br"}), True),
    ("gzip", frozenset(), False),
    ("br", frozenset({"gzip"}), False),
])
def test_coding_acceptable(encoding: str | None, accepted: frozenset[str], ok: bool) -> None:
    assert coding_acceptable(encoding, accepted) is ok


# -- conditional requests -----------------------------------------------------------------

LAST_MODIFIED = "Tue, 15 Nov 1994 12:45:26 GMT"
EARLIER = "Mon, 14 Nov 1994 12:45:26 GMT"
LATER = "Wed, 16 Nov 1994 12:45:26 GMT"


@pytest.mark.parametrize("inm, etag, result", [
    ('"v1"', '"v1"', True),
    ('"v0", "v1"', '"v1"', True),
    ('W/"v1"', '"v1"', True),  # If-None-Match uses the weak comparison
    ('"v1"', 'W/"v1"', True),
    ('W/"v1"', 'W/"v1"', True),
    ("*", '"v1"', True),
    ('"v2"', '"v1"', False),
    ('"V1"', '"v1"', False),
    ('"v1"', None, False),
])
def test_if_none_match(inm: str, etag: str | None, result: bool) -> None:
    assert not_modified(h(("If-None-Match", inm)), etag, LAST_MODIFIED) is result


def test_if_none_match_over_several_headers() -> None:
    headers = h(("If-None-Match", '"a"'), ("If-None-Match", '"v1"'))
    assert not_modified(headers, '"v1"', None) is True


def test_if_none_match_wins_over_if_modified_since() -> None:
    headers = h(("If-None-Match", '"v2"'), ("If-Modified-Since", LATER))
    assert not_modified(headers, '"v1"', LAST_MODIFIED) is False


@pytest.mark.parametrize("since, result", [
    (LATER, True),
    (LAST_MODIFIED, True),
    (EARLIER, False),
    ("Tuesday, 15-Nov-94 12:45:26 GMT", True),  # RFC 850
    ("garbage", False),
    ("", False),
    ("Tue, 45 Nov 1994 12:45:26 GMT", False),
])
def test_if_modified_since(since: str, result: bool) -> None:
    assert not_modified(h(("If-Modified-Since", since)), '"v1"', LAST_MODIFIED) is result


def test_if_modified_since_without_a_stored_last_modified() -> None:
    assert not_modified(h(("If-Modified-Since", LATER)), '"v1"', None) is False
    assert not_modified(h(("If-Modified-Since", LATER)), '"v1"', "garbage") is False


def test_no_conditional_headers() -> None:
    assert not_modified(h(), '"v1"', LAST_MODIFIED) is False


@pytest.mark.parametrize("since", ["Wed Nov 16 12:45:26 1994",
                                   "Wed, 16 Nov 1994 12:45:26 -0000"])
def test_if_modified_since_in_asctime_or_unknown_zone(since: str) -> None:
    assert not_modified(h(("If-Modified-Since", since)), '"v1"', LAST_MODIFIED) is True
