"""The one shared client session to the identity service, configured for a proxy.

aiohttp's client defaults suit a browser-like client, not a proxy: it would follow
redirects, keep cookies across callers, decompress bodies and add headers. All of that
is turned off here, and transport failures become `UpstreamTimeout`/`UpstreamUnavailable`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from sidecar.errors import UpstreamTimeout, UpstreamUnavailable
from sidecar.settings import Settings

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
CHUNK = 64 * 1024


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self.base = settings.upstream_url
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.upstream_connect_timeout,
            sock_read=settings.upstream_read_timeout,
        )
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
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
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
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
        assert self._session is not None, "Upstream.start() was not awaited"
        url = self.url(raw_target)
        attempts = 2 if body is None and method in _IDEMPOTENT else 1
        for attempt in range(attempts):
            try:
                response = await self._session.request(
                    method, url, headers=headers, data=body, allow_redirects=False,
                    compress=None, chunked=None,
                )
                break
            except aiohttp.ServerDisconnectedError as exc:
                # A pooled keep-alive socket closed by the upstream (aiohttp#3609):
                # retry once, idempotent requests without a body only.
                if attempt + 1 < attempts:
                    continue
                raise UpstreamUnavailable(f"upstream closed the connection: {exc}") from None
            except (TimeoutError, aiohttp.ServerTimeoutError):
                raise UpstreamTimeout("upstream did not answer in time") from None
            except aiohttp.ClientError as exc:
                raise UpstreamUnavailable(f"upstream unreachable: {type(exc).__name__}") from None
        try:
            yield response
        finally:
            response.release()


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
    if declared is not None and declared.isdigit() and int(declared) != len(body):
        raise UpstreamUnavailable("upstream body shorter than its Content-Length")
    return body, True
