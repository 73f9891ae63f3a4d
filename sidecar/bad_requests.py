"""Malformed requests (the HTTP parser's 400s): counted by kind, logged at most once per interval.

aiohttp answers a request it cannot parse with a 400 and logs the parser's exception at error
level through the handler's `logger` (`RequestHandler.handle_error`), one line with a
traceback per request, and that exception's text quotes the raw bytes (a path with an id, a
header value). Each app passes a `BadRequestLog` as that logger (`handler_args`): parser
errors become `sidecar_bad_requests_total{kind}` and one rate-limited warning without request
bytes; everything else (a handler that raised) still reaches `aiohttp.server` unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import (
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from prometheus_client import Counter

from sidecar.logs import RateLimitedWarning

_SERVER_LOGGER = "aiohttp.server"
_HEADER_WORDS = ("header", "content-length", "transfer-encoding")


def server_logger(counter: Counter, interval: float) -> dict[str, Any]:
    """`handler_args` for a `web.Application` whose handlers log through a `BadRequestLog`."""
    return {"logger": BadRequestLog(counter, interval)}


def bad_request_kind(exc: HttpProcessingError) -> str:
    """One of `metrics.BAD_REQUEST_KINDS`. The C parser raises a plain `BadHttpMessage` for most
    header errors ("Invalid header token"), so its fixed message prefix is consulted too.
    """
    message = str(exc.message).lower()
    if isinstance(exc, LineTooLong) or "too many headers" in message:
        return "too-large"
    if isinstance(exc, BadStatusLine | InvalidURLError):
        return "bad-request-line"
    if isinstance(exc, PayloadEncodingError):  # the body, not its headers
        return "other"
    if isinstance(exc, InvalidHeader) or any(word in message for word in _HEADER_WORDS):
        return "bad-header"
    return "other"


class BadRequestLog(logging.Logger):
    """The `logger` of one app's request handlers; a child of the real `aiohttp.server`."""

    def __init__(
        self, counter: Counter, interval: float, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(_SERVER_LOGGER)
        self.parent = logging.getLogger(_SERVER_LOGGER)  # levels and handlers from there
        self._counter = counter
        self._warn = RateLimitedWarning(logging.getLogger("sidecar.http"), interval, clock)

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        if not self._absorbed(exc_info):
            super().exception(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        # aiohttp logs a bad method on a connection's first request at debug level (port
        # scanners, TLS to a plain port): counted too, so the metric sees every 400.
        if not self._absorbed(kwargs.get("exc_info")):
            super().debug(msg, *args, **kwargs)

    def _absorbed(self, exc_info: Any) -> bool:
        exc = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) == 3 else exc_info
        if not isinstance(exc, HttpProcessingError):
            return False
        kind = bad_request_kind(exc)
        self._counter.labels(kind).inc()
        self._warn.warn("bad-request", f"malformed request answered {exc.code or 400} "
                                       f"({kind}, {type(exc).__name__})")
        return True
