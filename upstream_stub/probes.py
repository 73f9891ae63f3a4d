"""Unauthenticated diagnostic routes that let tests see exactly what crossed the proxy."""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import web

from upstream_stub.render import StubError, drop_connection, dumps

KIB = 1024


def _number(request: web.Request, name: str, default: float) -> float:
    try:
        return float(request.query.get(name, default))
    except ValueError:
        raise StubError(422, f"query parameter {name} must be a number") from None


async def echo(request: web.Request) -> web.StreamResponse:
    """Buffers before replying because the digest header must precede the body."""
    digest, chunks = hashlib.sha256(), []
    async for chunk in request.content.iter_chunked(64 * KIB):
        digest.update(chunk)
        chunks.append(chunk)
    resp = web.StreamResponse(headers={
        "Content-Type": "application/octet-stream",
        "X-Body-Sha256": digest.hexdigest(),
        "X-Received-Content-Length": request.headers.get("Content-Length", "none"),
        "X-Received-Transfer-Encoding": request.headers.get("Transfer-Encoding", "none"),
    })
    resp.content_length = sum(map(len, chunks))
    await resp.prepare(request)
    for chunk in chunks:
        await resp.write(chunk)
    return resp


async def echo_headers(request: web.Request) -> web.Response:
    """Raw headers, so duplicates, order and spelling are visible, not a normalised dict."""
    def text(raw: bytes) -> str:
        return raw.decode("utf-8", "backslashreplace")

    payload = {
        "headers": [[text(name), text(value)] for name, value in request.raw_headers],
        "raw_path": request.raw_path,
        "method": request.method,
    }
    return web.Response(body=dumps(payload), content_type="application/json")


async def slow(request: web.Request) -> web.Response:
    ms = _number(request, "ms", 0)
    await asyncio.sleep(max(ms, 0) / 1000)
    slept = int(ms) if ms.is_integer() else ms
    return web.Response(body=dumps({"slept_ms": slept}), content_type="application/json")


async def stream(request: web.Request) -> web.StreamResponse:
    """Paced 1 KiB chunks; with close_early=1 the connection drops before the promised length."""
    chunks = int(_number(request, "chunks", 4))
    delay_ms = _number(request, "delay_ms", 0)
    close_early = request.query.get("close_early") == "1"
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if close_early:
        resp.content_length = (chunks + 1) * KIB
    await resp.prepare(request)
    for i in range(chunks):
        if i and delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        await resp.write(bytes([ord("a") + i % 26]) * KIB)
    if close_early:
        drop_connection(request)
    return resp


async def redirect(request: web.Request) -> web.Response:
    """The proxy must relay this 302 and its cookie, not follow it."""
    return web.Response(status=302, headers={
        "Location": "/api/v1/echo/headers",
        "Set-Cookie": "session=abc; Path=/",
    })


def add_routes(app: web.Application) -> None:
    app.router.add_route("POST", "/api/v1/echo", echo)
    app.router.add_route("PUT", "/api/v1/echo", echo)
    app.router.add_get("/api/v1/echo/headers", echo_headers)
    app.router.add_get("/api/v1/slow", slow)
    app.router.add_get("/api/v1/stream", stream)
    app.router.add_get("/api/v1/redirect", redirect)
