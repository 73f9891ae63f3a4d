"""The one shared client session to the identity service, configured for a proxy.

aiohttp's client defaults suit a browser-like client, not a proxy: it would follow
redirects, keep cookies across callers, decompress bodies and add headers. All of that
is turned off here, and transport failures become `UpstreamTimeout`/`UpstreamUnavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from multidict import CIMultiDict
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from yarl import URL

from sidecar.errors import UpstreamTimeout, UpstreamUnavailable
from sidecar.logs import RateLimitedWarning
from sidecar.settings import Settings
from sidecar.telemetry import PROPAGATOR, Telemetry
from sidecar.upstream_framing import framed_connector

log = logging.getLogger("sidecar.upstream")
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
CHUNK = 64 * 1024


class Upstream:
    def __init__(self, settings: Settings, telemetry: Telemetry | None = None) -> None:
        self.base = settings.upstream_url
        self.telemetry = telemetry
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.upstream_connect_timeout,
            sock_read=settings.upstream_read_timeout,
        )
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._warn = RateLimitedWarning(log, settings.warn_interval)
        self._origin = URL(self.base).origin()  # no credentials or path in a log line

    def _unreachable(self, kind: str, cause: str) -> None:
        """The access line shows only a 502: say once per interval that the service itself
        cannot be reached (its address, never a request's path)."""
        self._warn.warn(f"upstream-{kind}", f"upstream {self._origin} cannot be reached "
                        f"({kind}: {cause}); answering 502")

    async def start(self) -> None:
        connector = framed_connector(
            limit=self._settings.upstream_max_connections,
            # Shorter than uvicorn's 5 s idle timeout, so pooled sockets are not reused
            # just as the upstream closes them.
            keepalive_timeout=self._settings.upstream_keepalive,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=self.timeout,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, raw_target: str) -> URL:
        """Upstream URL from the raw target: no re-encoding, the query byte-for-byte."""
        return URL(self.base + raw_target, encoded=True)

    @asynccontextmanager
    async def request(
        self, method: str, raw_target: str, headers: CIMultiDict[str], body: Any = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request; yield the response with its body still unread."""
        response = await self.open(method, raw_target, headers, body)
        try:
            yield response
        finally:
            response.release()

    async def open(
        self, method: str, raw_target: str, headers: CIMultiDict[str], body: Any = None,
    ) -> aiohttp.ClientResponse:
        """Send a request; the caller owns the response and must `release()` it."""
        url = self.url(raw_target)
        attempts = 2 if body is None and method in _IDEMPOTENT else 1
        span = None
        if self.telemetry is not None and self.telemetry.enabled:
            span = self.telemetry.tracer.start_span(f"upstream {method}", kind=SpanKind.CLIENT)
            # Our span becomes the upstream's parent (W3C traceparent).
            PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        try:
            response = await self._send(method, url, headers, body, attempts)
        except BaseException:
            if span is not None:
                span.set_status(StatusCode.ERROR)
                span.end()
            raise
        if span is not None:
            span.set_attribute("http.response.status_code", response.status)
            span.end()
        return response

    async def _send(
        self, method: str, url: URL, headers: CIMultiDict[str], body: Any, attempts: int
    ) -> aiohttp.ClientResponse:
        assert self._session is not None, "Upstream.start() was not awaited"
        for attempt in range(attempts):
            try:
                return await self._session.request(
                    method, url, headers=headers, data=body, allow_redirects=False,
                    compress=None, chunked=None,
                )
            except aiohttp.ServerDisconnectedError as exc:
                # A pooled keep-alive socket closed by the upstream (aiohttp#3609):
                # retry once, idempotent requests without a body only.
                if attempt + 1 < attempts:
                    continue
                raise UpstreamUnavailable(f"upstream closed the connection: {exc}") from None
            except aiohttp.ConnectionTimeoutError:
                # Could not even connect: unreachable (502), not slow (504).
                self._unreachable("connect-timeout", "TimeoutError")
                raise UpstreamUnavailable("upstream connect timed out", sent=False) from None
            except aiohttp.ClientConnectorError as exc:
                # Refused, unresolvable, TLS handshake failed: nothing was sent.
                cause = type(exc.os_error).__name__ if exc.os_error else type(exc).__name__
                self._unreachable("refused" if isinstance(
                    exc.os_error, ConnectionRefusedError) else "unreachable", cause)
                raise UpstreamUnavailable(
                    f"upstream unreachable: {type(exc).__name__}", sent=False) from None
            except (TimeoutError, aiohttp.ServerTimeoutError):
                raise UpstreamTimeout("upstream did not answer in time") from None
            except aiohttp.ClientError as exc:
                raise UpstreamUnavailable(f"upstream unreachable: {type(exc).__name__}") from None
        raise UpstreamUnavailable("upstream closed the connection")


async def read_capped(response: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """Read up to `cap` bytes; the flag says whether the whole body fit.

    Raises UpstreamTimeout/UpstreamUnavailable when the body is cut short, so a truncated
    body is never mistaken for a complete one.
    """
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.content.iter_chunked(CHUNK):
            parts.append(chunk)
            size += len(chunk)
            if size > cap:
                return b"".join(parts), False
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout("upstream body timed out") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(f"upstream body cut short: {type(exc).__name__}") from None
    body = b"".join(parts)
    declared = response.headers.get("Content-Length")
    if response.status in (204, 304) or response.method == "HEAD":
        return body, True  # these carry no body whatever Content-Length says
    if declared is not None and declared.isdigit() and int(declared) != len(body):
        raise UpstreamUnavailable("upstream body shorter than its Content-Length")
    return body, True
