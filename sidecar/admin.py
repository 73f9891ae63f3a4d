"""The admin port: metrics, probes and purge. Never served on the proxy port, where
`/metrics` is just another upstream path.

With `SIDECAR_WORKERS` > 1 the supervisor serves this app with its own probes and metrics
(`supervisor.py`); purge keeps its checks, audit and counts here, once, and only the erasing
(`ERASE`) goes to every worker.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.bad_requests import server_logger
from sidecar.errors import CacheUnavailable
from sidecar.matching import SAFE_KEY
from sidecar.runtime import RUNTIME, Runtime

audit = logging.getLogger("sidecar.audit")
PURGE_TIMEOUT = 10.0
Erase = Callable[[str, str], Awaitable[int]]  # (scope "key" | "prefix", target) -> removed
ERASE = web.AppKey[Erase]("erase")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(code: int, **body: object) -> web.Response:
    return web.json_response(body, status=code)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[RUNTIME].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return _json(200, status="alive")


async def readyz(request: web.Request) -> web.Response:
    """Ready while serving; never tied to Redis, because the cache fails open.

    `cache` names the backend while it is usable and says `degraded` while it is not
    (the watcher's pings fail, or the breaker is open): requests then go upstream.
    """
    rt = request.app[RUNTIME]
    if rt.draining:
        return _json(503, status="draining")
    backend = "disabled" if rt.cache is None else (
        rt.cache.store.name if rt.cache.healthy else "degraded")
    return _json(200, status="ready", rules=rt.rules.digest, cache=backend,
                 breaker="n/a" if rt.cache is None else rt.cache.breaker.state,
                 coordination=rt.coordinator.state,
                 near="off" if rt.near is None else (
                     "in-sync" if rt.near.in_sync else "out-of-sync"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _caller(request: web.Request, rt: Runtime) -> str | None:
    """Who is purging, or None when the caller may not."""
    token = rt.settings.admin_token
    if token is None:
        return "loopback" if _is_loopback(rt.settings.admin_host) else None
    supplied = request.headers.get("Authorization", "")
    if hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"),
                           f"Bearer {token}".encode()):
        return "admin-token"
    return None


def _fingerprint(rt: Runtime, key: str) -> str:
    """Audit logs name the entity without its id: a keyed hash an auditor can recompute."""
    return rt.hasher.keyed(key)


def _audit(request: web.Request, who: str, scope: str, target: str, result: str,
           removed: int | None) -> None:
    audit.info(json.dumps({
        "event": "cache_purge", "who": who, "peer": request.remote, "scope": scope,
        "target": target, "result": result, "removed": removed,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }))


async def purge_key(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    key = request.match_info["key"]
    return await _purge(request, rt, "key", key)


async def purge_prefix(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    prefix = request.query.get("prefix", "")
    return await _purge(request, rt, "prefix", prefix)


async def _purge(request: web.Request, rt: Runtime, scope: str, target: str) -> web.Response:
    who = _caller(request, rt)
    if who is None:
        rt.metrics.purges.labels(scope, "denied").inc()
        _audit(request, "unauthenticated", scope, "-", "denied", None)
        code = 403 if rt.settings.admin_token is None else 401
        return _json(code, error="forbidden",
                     message="purge needs SIDECAR_ADMIN_TOKEN as a bearer token "
                             "(or an admin port bound to loopback)")
    service = rt.rules.service
    if scope == "key":
        if not (SAFE_KEY.fullmatch(target) and target.rsplit(":", 1)[0] in rt.rules.prefixes):
            rt.metrics.purges.labels(scope, "bad-request").inc()
            return _json(400, error="bad_key",
                         message=f"an exact key like {service}:patient:42 under one of "
                                 f"{list(rt.rules.prefixes)} (no globs)")
        shown = f"{target.rsplit(':', 1)[0]}:#{_fingerprint(rt, target)}"
    else:
        if request.query.get("confirm") != "yes":
            rt.metrics.purges.labels(scope, "bad-request").inc()
            return _json(400, error="confirmation_required",
                         message="bulk purge needs confirm=yes")
        if target not in rt.rules.prefixes:
            rt.metrics.purges.labels(scope, "bad-request").inc()
            return _json(400, error="bad_prefix",
                         message=f"prefix must be one of {list(rt.rules.prefixes)}")
        shown = target
    try:
        async with asyncio.timeout(PURGE_TIMEOUT):
            removed = await request.app[ERASE](scope, target)
    except (CacheUnavailable, OSError, TimeoutError) as exc:
        rt.metrics.purges.labels(scope, "error").inc()
        _audit(request, who, scope, shown, f"error:{type(exc.__cause__ or exc).__name__}", None)
        return _json(503, error="cache_unavailable", message="the cache did not answer")
    if scope == "key":
        await rt.coordinator.announce((target,), None)
    else:
        await rt.coordinator.announce((), target)
    rt.metrics.purges.labels(scope, "ok").inc()
    rt.metrics.invalidations.labels("purge").inc(removed)
    _audit(request, who, scope, shown, "ok", removed)
    return _json(200, scope=scope, removed=removed)


async def erase_here(rt: Runtime, scope: str, target: str) -> int:
    """This process's part of a purge: in-flight fills must not store, then delete."""
    keys, prefix = ((target,), None) if scope == "key" else ((), target)
    if rt.invalidator is not None:
        rt.invalidator.poison(keys, prefix)
    removed = await (rt.store.delete([target]) if scope == "key"
                     else rt.store.delete_prefix(target))
    if rt.invalidator is not None:  # reads during the delete (or the slow SCAN) refill nothing
        rt.invalidator.poison(keys, prefix)
    return removed


PROBES: Mapping[str, Handler] = {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}


def admin_app(rt: Runtime, erase: Erase | None = None,
              probes: Mapping[str, Handler] = PROBES) -> web.Application:
    app = web.Application(
        handler_args=server_logger(rt.metrics.bad_requests, rt.settings.warn_interval))
    app[RUNTIME] = rt
    app[ERASE] = erase or partial(erase_here, rt)
    for path, handler in probes.items():
        app.router.add_get(path, handler)
    app.router.add_delete("/cache/{key}", purge_key)
    app.router.add_delete("/cache", purge_prefix)
    return app
