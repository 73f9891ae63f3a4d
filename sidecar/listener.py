"""The HTTP listener's own limits, where aiohttp 3.14 leaves a client unbounded.

- **Header deadline** (`SIDECAR_HEADER_TIMEOUT_S`): aiohttp has none. Its keep-alive timer
  (`SIDECAR_KEEPALIVE_TIMEOUT_S`) is armed when a connection opens and when a response ends,
  and bytes arriving do not extend it, so it bounds a slow sender too, but only by the
  keep-alive timeout, which may have to be long (longer than a load balancer's idle timeout).
  Here a request's headers must arrive within the deadline, counted from the connection's
  start or from the first byte of the next request on a keep-alive connection. One timer
  handle per connection (`loop.call_at`); a request whose headers come in one read (the
  usual case on a kept connection) arms none.
- **The fast path** (`fast`, see fast_hit.py): while the connection is idle, requests parsed
  from a read are offered to it in order before aiohttp's loop is woken; each it answers is
  written at once (the keep-alive timer restarts as after any response), and the first it
  declines, with everything behind it, goes to aiohttp's handler as usual.
- **Bounded drain**: `RequestHandler.shutdown(timeout)` waits the timeout, then only fails the
  request's body and waits it again before cancelling, so one request that outlives the budget
  held SIGTERM for twice the budget. Here requests in flight get the budget once; those still
  running are cancelled, get `CANCEL_GRACE_S` to unwind, and are counted in one log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import http_parser, web
from aiohttp.streams import EMPTY_PAYLOAD

from sidecar.wire import DRAIN_ABOVE

log = logging.getLogger("sidecar")
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# A parsed request without body, and its client's address -> the whole answer, or None
# (aiohttp's handler answers it). See fast_hit.py.
FastAnswer = Callable[[http_parser.RawRequestMessage, str | None], bytes | None]
# The parser's message class (aiohttp's C parser has its own), and the pure-Python one.
_REQUESTS: tuple[type, ...] = (http_parser.RawRequestMessage, http_parser.RawRequestMessagePy)
CANCEL_GRACE_S = 0.5
# The admin port drains after the proxy port (its probes answer 503 meanwhile): scrapes,
# probes and purges are short, so its own budget is this, then CANCEL_GRACE_S.
ADMIN_DRAIN_S = 1.0


class HeaderDeadlineHandler(web.RequestHandler):
    """aiohttp's connection protocol plus a deadline for each request's headers."""

    __slots__ = ("_client", "_end", "_fast", "_fast_answered", "_header_handle",
                 "_header_timeout", "_ordinary_done", "_ordinary_kept")

    def __init__(self, manager: web.Server, *, header_timeout: float,
                 fast: FastAnswer | None = None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_handle: asyncio.TimerHandle | None = None
        self._fast = fast  # never raises (see fast_hit.py)
        self._client: str | None = None
        self._end = b""  # the last 4 bytes received, across reads
        # Requests answered here, and by aiohttp's handler (its last one kept alive?): when
        # every request aiohttp was given is done, its loop only has to come back round.
        self._fast_answered = 0
        self._ordinary_done = 0
        self._ordinary_kept = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = self.peername  # what aiohttp's `request.remote` says
        self._client = None if peer is None else str(
            peer[0] if isinstance(peer, (list, tuple)) else peer)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        waiter = self._waiter
        end = self._end = data[-4:] if len(data) >= 4 else (self._end + data)[-4:]
        if self._fast is not None and not self._messages and not self._buffer_paused and (
                (waiter is not None and not waiter.done()) or self._between()):
            # Idle: what arrives may be answered here, before aiohttp's loop is woken.
            self._waiter = None
            try:
                super().data_received(data)
            finally:
                self._waiter = waiter
            if self._messages:
                self._answer_fast()
                if self._messages:
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)  # the rest, in order, is aiohttp's
                    # (between requests, aiohttp's loop finds them when it comes round)
                elif self._buffer_paused:  # the queue filled: aiohttp's loop would resume
                    self._resume_reading_if_drained()  # (it parses what is held back)
        else:
            super().data_received(data)
        if self._request_count != parsed:  # a request's headers are complete
            if self._header_handle is not None:
                self._header_handle.cancel()
                self._header_handle = None
            if (not self._messages and (self._idle() or self._between())
                    and end != b"\r\n\r\n"):
                # Answered here, and the read carried the start of the next request (a
                # complete request without body ends with the blank line): its deadline.
                self._arm_header_deadline()
        elif self._header_handle is None and data and self._idle():
            # The first bytes of the next request on a kept connection. (Bytes of a pipelined
            # request that arrive while one is handled: aiohttp's keep-alive timer, armed when
            # that response ends, bounds them.)
            self._arm_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_handle is not None:
            self._header_handle.cancel()
            self._header_handle = None
        super().connection_lost(exc)

    def _between(self) -> bool:
        """aiohttp's loop has answered every request it was given, the last one kept alive,
        and has yet to come round to wait for the next (its task resumes an iteration
        later): nothing of it can be written after what is answered here now."""
        return (self._waiter is None and not self._request_in_progress and self._ordinary_kept
                and not self._close and not self._force_close
                and self._request_count - self._fast_answered == self._ordinary_done)

    async def _handle_request(self, request: web.BaseRequest, start_time: float | None,
                              request_handler: Handler) -> tuple[web.StreamResponse, bool]:
        self._ordinary_kept = False
        try:
            resp, reset = await super()._handle_request(request, start_time, request_handler)
        finally:
            self._ordinary_done += 1
        self._ordinary_kept = not reset and bool(resp.keep_alive)
        return resp, reset

    def _answer_fast(self) -> None:
        """Answer the queued requests `fast` takes, in order, until one it does not."""
        fast, transport, messages = self._fast, self.transport, self._messages
        assert fast is not None and self._parser is not None
        while messages:
            message, payload = messages[0]
            if (payload is not EMPTY_PAYLOAD or type(message) not in _REQUESTS
                    or transport is None or transport.is_closing()
                    or transport.get_write_buffer_size() > DRAIN_ABOVE):  # aiohttp drains
                return
            wire = fast(message, self._client)  # type: ignore[arg-type]  # one of _REQUESTS
            if wire is None:
                return
            messages.popleft()
            self._fast_answered += 1
            self._parser.message_consumed()
            assert self._manager is not None
            self._manager.requests_count += 1
            transport.write(wire)
            # What aiohttp does once a kept-alive response is written: the idle timer restarts.
            self._keepalive = True
            close_time = self._loop.time() + self._keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    def _idle(self) -> bool:
        """Waiting for a request: nothing handled, nothing queued."""
        return self._waiter is not None and not self._waiter.done()

    def _arm_header_deadline(self) -> None:
        loop = self._loop
        self._header_handle = loop.call_at(loop.time() + self._header_timeout,
                                           self._header_deadline_passed)

    def _header_deadline_passed(self) -> None:
        self._header_handle = None
        if self._idle():  # still no complete request: close, without an answer
            self.force_close()


class BoundedServer(web.Server):
    """Builds `HeaderDeadlineHandler`s; drains in one budget, then cuts and counts."""

    def __init__(self, handler: Any, *, listener: str, fast: FastAnswer | None = None,
                 **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.listener = listener
        self._fast = fast

    def __call__(self) -> web.RequestHandler:
        return HeaderDeadlineHandler(self, loop=self._loop, fast=self._fast, **self._kwargs)

    # The signature aiohttp's runner calls (`Server.shutdown(timeout)`).
    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """In-flight requests get `timeout` once; the rest are cancelled and counted.

        The runner has closed the listener and every connection already (idle ones end at
        once, busy ones after their response), so waiting on each connection's task is
        waiting for its request.
        """
        conns = list(self._connections)
        running = {task: conn for conn in conns if (task := _task(conn)) is not None}
        in_flight = sum(1 for conn in conns if conn._request_in_progress)
        pending: set[asyncio.Task[None]] = set()
        if running:
            _, pending = await asyncio.wait(running, timeout=timeout)
        cut = sum(1 for task in pending if running[task]._request_in_progress)
        for task in pending:
            task.cancel()  # and with it the request handler it awaits
        if pending:
            await asyncio.wait(pending, timeout=CANCEL_GRACE_S)
        for conn in conns:
            conn.force_close()
        self._connections.clear()
        extra = {"listener": self.listener, "in_flight": in_flight, "cut_requests": cut,
                 "timeout_s": timeout}
        if cut:
            log.warning("drain budget spent: in-flight requests cut", extra=extra)
        else:
            log.info("drained", extra=extra)


def _task(conn: web.RequestHandler) -> asyncio.Task[None] | None:
    """The connection's task while it still runs: it ends after the request in progress."""
    task = conn._task_handler
    if task is None and conn._current_request is not None:
        task = conn._current_request.task  # the client left; the handler runs on
    return task if task is not None and not task.done() else None


class BoundedRunner(web.AppRunner):
    """`web.AppRunner` serving through a `BoundedServer`: keep-alive, header, drain limits."""

    __slots__ = ("_direct", "_fast", "_listener")

    def __init__(self, app: web.Application, *, listener: str, keepalive_timeout: float,
                 header_timeout: float, shutdown_timeout: float,
                 direct: Callable[[Handler], Handler] | None = None,
                 fast: FastAnswer | None = None, **kwargs: Any) -> None:
        super().__init__(app, access_log=None, shutdown_timeout=shutdown_timeout,
                         keepalive_timeout=keepalive_timeout, header_timeout=header_timeout,
                         **kwargs)
        self._listener = listener
        self._direct = direct  # wraps the app's handler: a port with one route skips routing
        self._fast = fast  # answers plain hits before aiohttp's handler (fast_hit.py)

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # the app's startup, aiohttp's handler kwargs
        handler = made.request_handler
        if self._direct is not None:
            handler = self._direct(handler)
        return BoundedServer(handler, listener=self._listener, fast=self._fast,
                             request_factory=made.request_factory,
                             handler_cancellation=made.handler_cancellation,
                             loop=made._loop, **made._kwargs)
