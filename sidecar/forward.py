"""Pass-through: stream a request to the upstream and its response back, untouched.

Used for everything the cache does not answer: other methods, unmatched paths, bypassed
requests, and oversized bodies. Bodies stream both ways; only hop-by-hop headers change.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from sidecar.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from sidecar.headers import client_headers, has_unsendable_value, upstream_request_headers
from sidecar.logs import RateLimitedWarning
from sidecar.metrics import Metrics
from sidecar.request_ids import REQUEST_ID, REQUEST_ID_HEADER
from sidecar.responses import BYPASS, cache_status, error, label
from sidecar.upstream import CHUNK, Upstream

log = logging.getLogger("sidecar.proxy")
_warn = RateLimitedWarning(log, 10.0)
# Called with the upstream status once its headers arrive, or None when the request was
# sent (it may have committed) but no answer came back. Not called when nothing was sent.
OnHeaders = Callable[[int | None], Awaitable[None]]


@dataclass(frozen=True, eq=False, slots=True)
class Passage:
    """What a pass-through needs: the upstream, its metrics, the public origin to send."""

    upstream: Upstream
    metrics: Metrics
    public_origin: tuple[str, str] | None


def forwarded_headers(
    request: web.Request, public_origin: tuple[str, str] | None, *,
    strip_conditionals: bool = False,
) -> CIMultiDict[str]:
    headers = upstream_request_headers(
        request.headers, request.remote, public_origin, strip_conditionals=strip_conditionals,
    )
    request_id = request.get(REQUEST_ID)
    if request_id is not None:  # the service logs the same id as the sidecar
        headers.popall(REQUEST_ID_HEADER, None)
        headers[REQUEST_ID_HEADER] = request_id
    return headers


def upstream_failure(metrics: Metrics, rule: str, exc: UpstreamError, x_cache: str
                     ) -> web.Response:
    kind = "timeout" if isinstance(exc, UpstreamTimeout) else "unavailable"
    metrics.upstream_errors.labels(rule, kind).inc()
    if kind == "timeout":
        return error(504, "upstream_timeout", "The identity service did not answer in time.",
                     x_cache, "upstream-timeout")
    return error(502, "upstream_unavailable", "The identity service could not be reached.",
                 x_cache, "upstream-unavailable")


async def forward(
    request: web.Request, passage: Passage, *, rule: str, x_cache: str, detail: str,
    on_headers: OnHeaders | None = None,
) -> web.StreamResponse:
    headers = forwarded_headers(request, passage.public_origin)
    body = None
    if request.body_exists:
        body = request.content
        if "Content-Length" in request.headers:
            headers["Content-Length"] = request.headers["Content-Length"]
    start = time.perf_counter()
    answered = False
    try:
        async with passage.upstream.request(request.method, request.raw_path, headers, body) as up:
            passage.metrics.upstream.labels(rule).observe(time.perf_counter() - start)
            answered = True
            if on_headers is not None:
                await on_headers(up.status)
            if not 200 <= up.status <= 599:
                raise UpstreamUnavailable("upstream sent a status a proxy cannot relay")
            if has_unsendable_value(up.headers):
                raise UpstreamUnavailable("upstream sent a header a proxy cannot relay")
            return await relay(request, up, x_cache, detail)
    except UpstreamError as exc:
        sent = not isinstance(exc, UpstreamUnavailable) or exc.sent
        if on_headers is not None and not answered and sent:
            await on_headers(None)
        return upstream_failure(passage.metrics, rule, exc, x_cache)


async def relay(
    request: web.Request, up: aiohttp.ClientResponse, x_cache: str, detail: str,
    head: bytes = b"",
) -> web.StreamResponse:
    """Stream `up` to the client; `head` is body the cache fill has already read."""
    out = web.StreamResponse(status=up.status, reason=up.reason,
                             headers=client_headers(up.headers))
    fwd = "fwd=bypass" if x_cache == BYPASS else "fwd=miss"
    label(out.headers, x_cache, cache_status(fwd, f"detail={detail}"))
    request_id = request.get(REQUEST_ID)
    if request_id is not None:  # ours, not the service's (prepared here, not in serve)
        out.headers[REQUEST_ID_HEADER] = request_id
    length = up.headers.get("Content-Length")
    if length is not None and length.isdigit() and up.status not in (204, 304):
        out.content_length = int(length)
    if "Upgrade" in request.headers:
        # Never upgraded here, but aiohttp's parser may have stopped reading the connection
        # as HTTP after it: a request pipelined behind would wait for the keep-alive timeout.
        out.force_close()
    try:
        await out.prepare(request)
        if request.method == "HEAD":
            await out.write_eof()
            return out
    except ConnectionError:
        return out  # the client went away before the headers left: nothing to report
    chunks = up.content.iter_chunked(CHUNK)
    if head:
        try:
            await out.write(head)
        except ConnectionError:
            return out
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are gone already: the only honest signal left is a cut connection.
            _warn.warn("upstream-cut", f"upstream body cut short ({type(exc).__name__}); "
                                       "closing the client connection")
            if request.transport is not None:
                request.transport.abort()
            return out
        try:
            await out.write(chunk)
        except ConnectionError:
            return out  # the client went away; nothing to report
    with contextlib.suppress(ConnectionError):  # the client went away at the very end
        await out.write_eof()
    return out
