"""A replayed entry written to the socket as one buffer, below aiohttp's response machinery.

A hit is the sidecar's hottest path, and most of its cost was aiohttp building a header
multidict, checking and serialising it and walking the payload writer for a body it
already holds whole. The stored headers are serialised once per entry (cached on it); each
answer adds only its status line, `Age`, `X-Cache`, `Cache-Status` and `Content-Length`.

The headers are those aiohttp would send for the same `web.Response`: the same defaults
(`Content-Type` for a body, `Server`; placed before `Age` rather than after
`Content-Length`, the one difference), the same refusal of control characters (such an
entry takes the ordinary path; fills refuse them anyway). Only the plain
case comes here: HTTP/1.1 keep-alive GET with a full body. HEAD, 304, HTTP/1.0 and
`Connection: close` keep the ordinary path.
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_writer import HttpVersion11

from sidecar.entry import Entry
from sidecar.headers import (
    AGE,
    CACHE_STATUS,
    COMPUTED_PER_ANSWER,
    HOP_BY_HOP,
    UNSENDABLE,
    X_CACHE,
)
from sidecar.request_ids import REQUEST_ID_HEADER

# aiohttp's StreamWriter drains above this many buffered bytes; so does a wire answer.
DRAIN_ABOVE = 2**16
_REASONS = {int(s): s.phrase for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}  # status -> its line, for the statuses entries hold
# Names the answer computes, or that change framing: an entry holding one (none written
# today does) takes the ordinary path rather than send two of them.
_NOT_REPLAYED = COMPUTED_PER_ANSWER | HOP_BY_HOP


def eligible(request: web.BaseRequest) -> bool:
    """The plain case: a kept HTTP/1.1 connection asking for a full body."""
    return request.version == HttpVersion11 and request.keep_alive and request.method == "GET"


def stored_block(entry: Entry) -> bytes | None:
    """The entry's stored headers as wire bytes (cached), or None for the ordinary path.

    Statuses without a body (1xx, 204, 304; RFC 9110 §8.6) never carry a Content-Length,
    so they keep aiohttp's rules.
    """
    if entry.status < 200 or entry.status in (204, 304):
        return None
    block = entry.wire
    if block is None:
        block = _serialise(entry)
        entry.remember_wire(block)
    return block or None


def _serialise(entry: Entry) -> bytes:
    lines = []
    names = set()
    for name, value in entry.headers:
        if UNSENDABLE.search(name) or UNSENDABLE.search(value):
            return b""  # the ordinary path refuses it, as aiohttp does
        if name.lower() in _NOT_REPLAYED:
            return b""
        lines.append(f"{name}: {value}\r\n")
        names.add(name.lower())
    if "date" not in names:
        return b""  # every stored entry has one; aiohttp would add "now" otherwise
    if entry.body and "content-type" not in names:
        lines.append("Content-Type: application/octet-stream\r\n")  # RFC 9110 §8.3
    if "server" not in names:
        lines.append(f"Server: {SERVER_SOFTWARE}\r\n")
    return "".join(lines).encode()


class WireResponse(web.StreamResponse):
    """A response whose bytes are complete before `prepare`: one transport write."""

    def __init__(self, status: int, wire: bytes) -> None:
        super().__init__(status=status)
        self._wire = wire

    async def prepare(self, request: web.BaseRequest) -> None:
        if self._eof_sent:
            return
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")  # aiohttp logs it as such
        self._req = request
        self._keep_alive = True
        self._eof_sent = True
        transport.write(self._wire)
        if transport.get_write_buffer_size() > DRAIN_ABOVE:
            await request._payload_writer.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        return


def wire_replay(entry: Entry, block: bytes, age: int, x_cache: str, status: str,
                request_id: str | None = None) -> WireResponse:
    return WireResponse(entry.status, wire_bytes(entry, block, age, x_cache, status,
                                                 request_id))


def wire_bytes(entry: Entry, block: bytes, age: int, x_cache: str, status: str,
               request_id: str | None = None) -> bytes:
    """The whole answer. `request_id` is of the safe alphabet (request_ids.SAFE_ID): no
    CR/LF can occur."""
    body = entry.body
    head = _STATUS_LINES.get(entry.status)
    if head is None:
        head = _STATUS_LINES[entry.status] = (
            f"HTTP/1.1 {entry.status} {_REASONS.get(entry.status, '')}\r\n").encode()
    rid = f"{REQUEST_ID_HEADER}: {request_id}\r\n" if request_id is not None else ""
    tail = (f"{AGE}: {age}\r\n{X_CACHE}: {x_cache}\r\n{CACHE_STATUS}: {status}\r\n{rid}"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return b"".join((head, block, tail, body))
