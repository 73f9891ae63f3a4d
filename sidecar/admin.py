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
import logging
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
    metrics = request.app[RUNTIME].metrics
    metrics.flush()  # this iteration's counts (see Metrics.flush)
    body = generate_latest(metrics.registry)
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


def _caller(request: web.Request, rt: Runtime) -> tuple[str | None, str]:
    """(who is purging, or None when the caller may not; why not)."""
    token = rt.settings.admin_token
    if token is None:
        if _is_loopback(rt.settings.admin_host):
            return "loopback", ""
        return None, "no-token-configured"
    supplied = request.headers.get("Authorization")
    if supplied is None:
        return None, "no-token"
    if hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"),
                           f"Bearer {token}".encode()):
        return "admin-token", ""
    return None, "bad-token"


def _fingerprint(rt: Runtime, key: str) -> str:
    """Audit logs name the entity without its id: a keyed hash an auditor can recompute."""
    return rt.hasher.keyed(key)


def _shown(rt: Runtime, scope: str, target: str) -> str:
    """The target as the audit names it; "-" for anything that is not a known key/prefix
    (a refused target may be any text, an id or a glob: never logged as sent)."""
    prefix = target.rsplit(":", 1)[0] if scope == "key" else target
    if prefix not in rt.rules.prefixes or (scope == "key" and not SAFE_KEY.fullmatch(target)):
        return "-"
    return f"{prefix}:#{_fingerprint(rt, target)}" if scope == "key" else target


def _audit(request: web.Request, who: str, scope: str, target: str, result: str,
           removed: int | None, reason: str | None = None) -> None:
    """One JSON object per purge attempt, refused ones included (the audit sink)."""
    fields: dict[str, object] = {
        "event": "cache_purge", "who": who, "peer": request.remote, "scope": scope,
        "target": target, "result": result, "removed": removed}
    if reason:
        fields["reason"] = reason
    audit.log(logging.WARNING if reason else logging.INFO, "cache purge", extra=fields)


def _refused(request: web.Request, rt: Runtime, scope: str, target: str, who: str,
             reason: str, code: int, **body: str) -> web.Response:
    result = "denied" if code in (401, 403) else "bad-request"
    rt.metrics.purges.labels(scope, result).inc()
    _audit(request, who, scope, _shown(rt, scope, target), result, None, reason)
    return _json(code, **body)


def _denial(rt: Runtime) -> str:
    if rt.settings.admin_token is not None:
        return "purge needs the SIDECAR_ADMIN_TOKEN value as a bearer token " \
               "(Authorization: Bearer <token>)"
    return "purge needs SIDECAR_ADMIN_TOKEN set (then sent as a bearer token), or the " \
           "admin port bound to loopback (SIDECAR_ADMIN_HOST=127.0.0.1)"


async def purge_key(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    key = request.match_info["key"]
    return await _purge(request, rt, "key", key)


async def purge_prefix(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    prefix = request.query.get("prefix", "")
    return await _purge(request, rt, "prefix", prefix)


def _check(request: web.Request, rt: Runtime, scope: str, target: str,
           who: str) -> web.Response | None:
    """The refusal for a malformed purge, or None when it may go ahead."""
    prefixes = list(rt.rules.prefixes)
    if scope == "key":
        if _shown(rt, scope, target) == "-":
            return _refused(request, rt, scope, target, who, "bad-key", 400, error="bad_key",
                            message=f"an exact key like {rt.rules.service}:patient:42 under "
                                    f"one of {prefixes} (no globs)")
    elif request.query.get("confirm") != "yes":
        return _refused(request, rt, scope, target, who, "unconfirmed", 400,
                        error="confirmation_required", message="bulk purge needs confirm=yes")
    elif target not in rt.rules.prefixes:
        return _refused(request, rt, scope, target, who, "bad-prefix", 400,
                        error="bad_prefix", message=f"prefix must be one of {prefixes}")
    return None


async def _purge(request: web.Request, rt: Runtime, scope: str, target: str) -> web.Response:
    who, why = _caller(request, rt)
    if who is None:
        code = 403 if rt.settings.admin_token is None else 401
        return _refused(request, rt, scope, target, "unauthenticated", why, code,
                        error="forbidden", message=_denial(rt))
    refusal = _check(request, rt, scope, target, who)
    if refusal is not None:
        return refusal
    shown = _shown(rt, scope, target)
    try:
        async with asyncio.timeout(PURGE_TIMEOUT):
            removed = await request.app[ERASE](scope, target)
    except (CacheUnavailable, OSError, TimeoutError) as exc:
        rt.metrics.purges.labels(scope, "error").inc()
        _audit(request, who, scope, shown, f"error:{type(exc.__cause__ or exc).__name__}", None)
        return _json(503, error="cache_unavailable", message="the cache did not answer")
    keys, prefix = ((target,), None) if scope == "key" else ((), target)
    if rt.invalidator is not None:
        await rt.invalidator.tell_others(keys, prefix)  # retried if it may not have gone out
    else:
        await rt.coordinator.announce(keys, prefix)
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
