"""Bytes-on-the-wire imitation of the real service (FastAPI JSON, Starlette GZipMiddleware) plus
the validators and faults the proxy must handle: ETag/304 and test-hook overrides."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

GZIP_MIN_BYTES = 500  # Starlette GZipMiddleware's default minimum_size
_EMPTY_BODY = {204, 304}


class StubError(Exception):
    """Rendered by the middleware as FastAPI's ``{"detail": ...}`` error body."""

    def __init__(self, status: int, detail: object, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})


@dataclass(frozen=True)
class Hooks:
    """Per-request fault injection, carried in headers so tests can drive it through the proxy."""

    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body_bytes: int = 0
    delay_ms: float = 0.0
    close_early: bool = False

    @classmethod
    def from_request(cls, request: web.Request, enabled: bool) -> Hooks:
        if not enabled:
            return cls()
        h = request.headers
        try:
            status = int(h["X-Stub-Status"]) if "X-Stub-Status" in h else None
            body_bytes = int(h.get("X-Stub-Body-Bytes", "0"))
            delay_ms = float(h.get("X-Stub-Delay-Ms", "0"))
        except ValueError as exc:
            raise StubError(400, f"bad test hook header: {exc}") from None
        if status is not None and not 200 <= status <= 599:
            raise StubError(400, f"X-Stub-Status out of range: {status}")
        extra = []
        for raw in h.getall("X-Stub-Header", []):
            name, sep, value = raw.partition(":")
            if not sep or not name.strip():
                raise StubError(400, f"X-Stub-Header must be 'Name: value', got {raw!r}")
            extra.append((name.strip(), value.strip()))
        close = h.get("X-Stub-Close-Early", "").strip() == "1"
        return cls(status, tuple(extra), body_bytes, delay_ms, close)


def dumps(payload: object) -> bytes:
    """Same separators and non-ASCII handling as FastAPI's JSONResponse."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode()


def _padded(payload: dict[str, Any], min_bytes: int) -> bytes:
    body = dumps(payload)
    if len(body) >= min_bytes:
        return body
    missing = min_bytes - len(dumps({**payload, "padding": ""}))
    return dumps({**payload, "padding": "x" * max(missing, 0)})


def accepts_gzip(request: web.Request) -> bool:
    for item in ",".join(request.headers.getall("Accept-Encoding", [])).split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() != "gzip":
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def _etag_matches(request: web.Request, etag: str) -> bool:
    tags = ",".join(request.headers.getall("If-None-Match", [])).split(",")
    wanted = {tag.strip().removeprefix("W/") for tag in tags}
    return "*" in wanted or etag.removeprefix("W/") in wanted


async def render(
    request: web.Request,
    payload: dict[str, Any],
    hooks: Hooks,
    *,
    status: int = 200,
    last_modified: str | None = None,
) -> web.StreamResponse:
    """Serialise and send; ``last_modified`` marks a cacheable GET (adds ETag and honours 304)."""
    if hooks.delay_ms > 0:
        await asyncio.sleep(hooks.delay_ms / 1000)
    body = _padded(payload, hooks.body_bytes)
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Content-Type"] = "application/json"
    # Like a service that honours the caller's id (the sidecar sends one), else makes one.
    headers["X-Request-Id"] = request.headers.get("X-Request-Id") or str(uuid.uuid4())
    if last_modified is not None:
        # Like a service behind proxy-headers middleware: links built from the forwarded
        # host and proto (the poisoning vector a cache must neutralise).
        origin_host = request.headers.get("X-Forwarded-Host") or request.host
        proto = request.headers.get("X-Forwarded-Proto") or request.scheme
        headers["Link"] = f'<{proto}://{origin_host}{request.path}>; rel="self"'
        # Computed on the identity body, so gzip and identity variants share one validator.
        headers["ETag"] = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        headers["Last-Modified"] = last_modified
    if len(body) >= GZIP_MIN_BYTES:
        headers["Vary"] = "Accept-Encoding"
        if accepts_gzip(request):
            body = gzip.compress(body, compresslevel=9, mtime=0)
            headers["Content-Encoding"] = "gzip"
    for name in {name for name, _ in hooks.headers}:
        headers.popall(name, None)  # a hook header replaces the stub's own one
    for name, value in hooks.headers:
        headers.add(name, value)
    if last_modified is not None and "ETag" in headers and _etag_matches(request, headers["ETag"]):
        status = 304
    if status in _EMPTY_BODY:
        headers.popall("Content-Type", None)
        headers.popall("Content-Encoding", None)
        return web.Response(status=status, headers=headers)
    if hooks.close_early:
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = 2 * len(body) + 1
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        drop_connection(request)
        return resp
    return web.Response(status=status, headers=headers, body=body)


def drop_connection(request: web.Request) -> None:
    """Close after flushing what was written: the client sees a body shorter than announced."""
    if request.transport is not None:
        request.transport.close()
