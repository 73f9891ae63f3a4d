"""Build the responses the sidecar itself produces: replays of entries, 304s, errors.

`X-Cache` is the short answer operators grep for; `Cache-Status` (RFC 9211) carries the
detail. Both are set here only, so every path labels itself the same way.
"""

from __future__ import annotations

import json

from aiohttp import web
from multidict import CIMultiDict

from sidecar.entry import Entry
from sidecar.headers import AGE, CACHE_NAME, CACHE_STATUS, X_CACHE
from sidecar.wire import WireResponse, stored_block, wire_replay

HIT, MISS, BYPASS, STALE = "HIT", "MISS", "BYPASS", "STALE"
_HIT_STATUS: dict[int, str] = {}
# RFC 9110 §15.4.5: a 304 carries the headers a 200 would have for these; and the stored
# Date (RFC 9111 §4: a stored response keeps its Date), not aiohttp's "now", which made
# the 304 of a hit differ from the hit itself whenever a second went by.
_304_HEADERS = frozenset({"cache-control", "content-location", "etag", "expires", "vary",
                          "last-modified", "date"})


def cache_status(*params: str) -> str:
    return "; ".join((CACHE_NAME, *[p for p in params if p]))


def hit_status(ttl: int) -> str:
    """A fresh hit's Cache-Status (`ttl` seconds left), remembered per value."""
    status = _HIT_STATUS.get(ttl)
    if status is None:
        if len(_HIT_STATUS) >= 4096:
            _HIT_STATUS.clear()
        status = _HIT_STATUS[ttl] = cache_status("hit", f"ttl={ttl}")
    return status


def label(headers: CIMultiDict[str], x_cache: str, status: str) -> None:
    headers[X_CACHE] = x_cache
    headers[CACHE_STATUS] = status


def replay(
    entry: Entry, *, now: float, head: bool, x_cache: str, status: str,
    not_modified: bool = False, plain: bool = False, request_id: str | None = None,
) -> web.Response | WireResponse:
    """A stored entry as a response; Age counts the time it has spent in the cache.

    `plain` (see `wire.eligible`): the request may get the one-buffer answer, which carries
    `request_id` itself (the app's response-prepare hook adds it to every other answer).
    """
    if plain and not not_modified and not head:
        block = stored_block(entry)
        if block is not None:
            return wire_replay(entry, block, entry.age(now), x_cache, status, request_id)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in entry.headers:
        if not not_modified or name.lower() in _304_HEADERS:
            headers.add(name, value)
    headers[AGE] = str(entry.age(now))
    label(headers, x_cache, status)
    if not_modified:
        return web.Response(status=304, headers=headers)
    response = web.Response(status=entry.status, headers=headers,
                            body=None if head else entry.body)
    if head:
        response.headers["Content-Length"] = str(len(entry.body))
    return response


def replay_range(entry: Entry, span: tuple[int, int], *, now: float, x_cache: str,
                 status: str) -> web.Response:
    """RFC 9110 §15.3.7: one range of a stored 200 as a 206, with its Content-Range."""
    first, last = span
    headers: CIMultiDict[str] = CIMultiDict(entry.headers)
    headers[AGE] = str(entry.age(now))
    headers["Content-Range"] = f"bytes {first}-{last}/{len(entry.body)}"
    label(headers, x_cache, status)
    return web.Response(status=206, headers=headers, body=entry.body[first:last + 1])


def error(status: int, code: str, message: str, x_cache: str, detail: str) -> web.Response:
    """A short JSON error: no stack trace, no upstream internals."""
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    label(headers, x_cache, cache_status(f"fwd={'bypass' if x_cache == BYPASS else 'miss'}",
                                         f"detail={detail}"))
    body = json.dumps({"error": code, "message": message, "status": status})
    return web.Response(status=status, headers=headers, text=body)
