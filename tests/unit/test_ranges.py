"""Which Range values a cache answers itself (RFC 9110 §14.1.1), and `If-Range` (§13.1.5)."""

from __future__ import annotations

import pytest

from sidecar.entry import Entry
from sidecar.ranges import if_range_holds, single_range


@pytest.mark.parametrize(("value", "length", "span"), [
    ("bytes=0-9", 100, (0, 9)),
    ("bytes=10-", 100, (10, 99)),
    ("bytes=-5", 100, (95, 99)),
    ("bytes=-500", 100, (0, 99)),  # a suffix longer than the body is the whole body
    ("bytes=90-500", 100, (90, 99)),  # a last position past the end is clamped
    ("BYTES = 0-0", 100, None),  # no space before `=`
    ("Bytes=0-0", 100, (0, 0)),  # the unit is case-insensitive
    (" bytes=0-0", 100, None),  # the value as received (aiohttp strips outer OWS)
    ("bytes= 3-4 ", 100, (3, 4)),
    ("bytes=0-1,3-4", 100, None),  # several ranges: the service answers
    ("bytes=5-4", 100, None),  # first after last: invalid
    ("bytes=100-", 100, None),  # past the end: unsatisfiable, the service answers
    ("bytes=-0", 100, None),
    ("bytes=0-9", 0, None),  # an empty body has no byte to send
    ("items=0-9", 100, None),  # other units
    ("bytes=+1-2", 100, None),
    ("bytes=0x1-2", 100, None),
    ("bytes=" + "9" * 19 + "-", 100, None),  # no unbounded int()
    ("bytes=1-" + "9" * 18, 100, (1, 99)),
    ("bytes=", 100, None),
    ("bytes=-", 100, None),
])
def test_single_range(value: str, length: int, span: tuple[int, int] | None) -> None:
    assert single_range(value, length) == span


def _entry(*headers: tuple[str, str]) -> Entry:
    return Entry(status=200, headers=headers, body=b"x" * 10, stored_at=0.0, ttl=60)


LAST = "Tue, 01 Dec 2026 10:00:00 GMT"
LATER = "Tue, 01 Dec 2026 10:00:05 GMT"


@pytest.mark.parametrize(("if_range", "headers", "holds"), [
    (None, (), True),
    ('"v1"', (("ETag", '"v1"'),), True),
    ('"v2"', (("ETag", '"v1"'),), False),
    ('W/"v1"', (("ETag", 'W/"v1"'),), False),  # a weak tag never matches (strong compare)
    ('"v1"', (("ETag", 'W/"v1"'),), False),
    ('"v1"', (), False),
    (LAST, (("Last-Modified", LAST), ("Date", LATER)), True),
    (LAST, (("Last-Modified", LAST), ("Date", LAST)), False),  # not a strong validator
    (LAST, (("Last-Modified", LAST),), False),  # no Date to tell
    (LATER, (("Last-Modified", LAST), ("Date", LATER)), False),
    ("yesterday", (("Last-Modified", LAST), ("Date", LATER)), False),
])
def test_if_range(if_range: str | None, headers: tuple[tuple[str, str], ...],
                  holds: bool) -> None:
    assert if_range_holds(if_range, _entry(*headers)) is holds
