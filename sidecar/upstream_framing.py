"""Upstream connections never read past the end of a response its headers declared.

An upstream that sends more bytes than its `Content-Length` says makes llhttp parse the
surplus as a second response and fail the whole exchange. nginx and Varnish relay the
declared bytes and drop the connection; so does this protocol. It frames each final
response by its `Content-Length`, hands the parser exactly that, drops the rest, closes
the connection, and flags the exchange (`overflowed`) so that it is never stored.

Responses framed otherwise (chunked, or delimited by the close) are left to the parser.
"""

from __future__ import annotations

import asyncio
import functools
import re
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

_MAX_HEAD = 64 * 1024  # past this the parser refuses the header block anyway
_STATUS = re.compile(rb"HTTP/[0-9]\.[0-9] ([0-9]{3})")
_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([0-9]{1,18})[ \t]*\r\n", re.I)
_CODING = re.compile(rb"\r\ntransfer-encoding[ \t]*:", re.I)
_UNFRAMED = -1


class FramedResponseHandler(ResponseHandler):
    """aiohttp's client protocol, clipped at each response's declared end."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._head = bytearray()
        self._left: int | None = None  # body bytes still due; None while in a header block
        self._framing = True
        self.overflowed = False
        self._final_code = 0  # status of the last response head parsed on this exchange
        self._finished = False  # a final response is complete: nothing more may arrive

    def set_response_params(self, **kwargs: Any) -> None:
        self._head.clear()
        self._left = None
        self._framing = True
        self.overflowed = False
        self._final_code = 0
        self._finished = False
        super().set_response_params(**kwargs)

    def data_received(self, data: bytes) -> None:
        if self.overflowed:
            return  # surplus of a response already complete: dropped with the connection
        if self._finished and data:  # (aiohttp also calls this with b"" to resume reading)
            # Bytes after a complete response and before the next request, in a later
            # packet: parsed, they would become the *next* caller's response (a desync that
            # hands one patient's record to another). Drop them with the connection.
            self.overflowed = True
            self._should_close = True
            if self.transport is not None:
                self.transport.close()
            return
        if self._framing and self._parser is not None and not self._upgraded:
            data = self._clip(data)
        if data:
            super().data_received(data)
        payload = self._payload
        if self._final_code >= 200 and payload is not None and payload.is_eof():
            self._finished = True

    def feed_data(self, data: Any, size: int = 0) -> None:
        """Each parsed (message, payload): note whether it was a final response."""
        message = data[0] if isinstance(data, tuple) and data else None
        code = getattr(message, "code", 0)
        if isinstance(code, int):
            self._final_code = code
        super().feed_data(data, size)

    def _clip(self, data: bytes) -> bytes:
        """The part of `data` that belongs to the response in progress."""
        used, size = 0, len(data)
        while used < size:
            if self._left is None:
                seen = len(self._head)
                self._head += data[used:]
                end = self._head.find(b"\r\n\r\n", max(0, seen - 3))
                if end < 0:
                    if len(self._head) > _MAX_HEAD:
                        self._framing = False
                    return data
                used += end + 4 - seen
                status, length = self._framed_length(bytes(self._head[:end + 4]))
                self._head.clear()
                if length == _UNFRAMED:
                    self._framing = False
                    return data
                if status < 200:
                    continue  # an interim response; the final one follows
                self._left = length
            take = min(self._left, size - used)
            used += take
            self._left -= take
            if self._left == 0:
                if used < size:
                    self.overflowed = True
                    self._should_close = True
                    return data[:used]
                self._left = None
        return data

    def _framed_length(self, head: bytes) -> tuple[int, int]:
        status_match = _STATUS.match(head)
        if status_match is None:
            return 0, _UNFRAMED
        status = int(status_match.group(1))
        if status < 200 or status in (204, 304) or self._skip_payload:
            return status, 0
        if _CODING.search(head):
            return status, _UNFRAMED
        length = _LENGTH.search(head)
        return status, int(length.group(1)) if length else _UNFRAMED


def framed_connector(**kwargs: Any) -> aiohttp.TCPConnector:
    """A TCPConnector whose connections use `FramedResponseHandler`."""
    connector = aiohttp.TCPConnector(**kwargs)
    loop = asyncio.get_running_loop()
    connector._factory = functools.partial(FramedResponseHandler, loop=loop)  # type: ignore[assignment]
    return connector


def overflowed(response: aiohttp.ClientResponse) -> bool:
    """Whether the upstream sent bytes past the end its headers declared."""
    protocol = getattr(response, "_protocol", None)  # kept by aiohttp past the release
    return isinstance(protocol, FramedResponseHandler) and protocol.overflowed
