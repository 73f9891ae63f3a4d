"""Range requests on a stored full 200 (RFC 9110 §14): pure header work.

Only the case a cache can answer exactly is answered here: one satisfiable byte range of a
stored 200, with `If-Range` honoured. Everything else a `Range` can say (several ranges,
other units, a range past the end) is the service's to answer: the request passes through
untouched, as every `Range` request did before.
"""

from __future__ import annotations

import re

from sidecar.entry import Entry
from sidecar.policy import http_date

# RFC 9110 §14.1.1: `bytes=first-last`, `bytes=first-` or `bytes=-suffix`; OWS around the
# one range; 18 digits at most (an offset past any stored body, never a huge int()).
_ONE_RANGE = re.compile(r"bytes=[ \t]*(?:([0-9]{1,18})-([0-9]{0,18})|-([0-9]{1,18}))[ \t]*",
                        re.ASCII | re.IGNORECASE)


def single_range(value: str, length: int) -> tuple[int, int] | None:
    """(first, last) byte positions, inclusive, or None when this is not one satisfiable
    byte range of a `length`-byte body."""
    m = _ONE_RANGE.fullmatch(value)
    if m is None or length == 0:
        return None
    first, last, suffix = m.groups()
    if suffix is not None:
        size = int(suffix)
        return (max(0, length - size), length - 1) if size > 0 else None
    start = int(first)
    end = int(last) if last else length - 1
    if start > end or start >= length:
        return None
    return start, min(end, length - 1)


def if_range_holds(value: str | None, entry: Entry) -> bool:
    """RFC 9110 §13.1.5: the range applies only to the representation the client holds.

    An entity tag must match the stored one by the strong comparison (a weak tag never
    does); a date must equal the stored `Last-Modified` and be a strong validator (at
    least a second before the stored `Date`). Anything else: send the whole body.
    """
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        etag = entry.header("ETag")
        return etag is not None and not value.startswith("W/") and value == etag.strip()
    modified = entry.header("Last-Modified")
    if modified is None:
        return False
    asked, stored, dated = http_date(value), http_date(modified), http_date(entry.header("Date"))
    return (asked is not None and asked == stored and dated is not None
            and (dated - asked).total_seconds() >= 1)
