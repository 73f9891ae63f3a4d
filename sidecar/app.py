"""App factory: builds the runtime (store, breaker, metrics, upstream) and the two apps.

Nothing is configured at import time, so tests build as many apps as they like.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from sidecar.access_log import AccessLog
from sidecar.admin import admin_app
from sidecar.audit import AuditSink
from sidecar.bad_requests import server_logger
from sidecar.breaker import Breaker
from sidecar.codec import build_codec
from sidecar.coordination import Coordinator, RedisCoordinator
from sidecar.guarded_store import GuardedStore
from sidecar.invalidation import Invalidator
from sidecar.jwks import Jwks
from sidecar.memory_store import MemoryStore
from sidecar.metrics import Metrics
from sidecar.near_cache import NearCache
from sidecar.proxy import handle
from sidecar.redis_ha import build_redis_store
from sidecar.redis_url import parse_target
from sidecar.rules import RuleSet
from sidecar.runtime import RUNTIME, Runtime
from sidecar.settings import Settings
from sidecar.sharing import Callers
from sidecar.store import CacheStore
from sidecar.telemetry import Telemetry
from sidecar.tokens import TokenVerifier
from sidecar.upstream import Upstream
from sidecar.variants import CredentialHasher

log = logging.getLogger("sidecar")
# An unknown token `kid` fetches the JWKS again at most this often (made-up kids cannot
# hammer the identity provider).
_UNKNOWN_KID_INTERVAL_S = 30.0


def build_store(settings: Settings, service: str = "identity") -> CacheStore:
    """The backend `REDIS_URL` names: memory, standalone Redis, Sentinel or Cluster."""
    if settings.redis_url.startswith("memory://"):
        return MemoryStore(settings.memory_max_bytes)
    tls: dict[str, Any] = {
        name: value for name, value in (
            ("ssl_ca_certs", settings.redis_tls_ca),
            ("ssl_certfile", settings.redis_tls_cert),
            ("ssl_keyfile", settings.redis_tls_key),
        ) if value
    }
    store = build_redis_store(settings, parse_target(settings.redis_url), tls)
    store.probe_prefix = service
    return store


def build_runtime(
    settings: Settings, rules: RuleSet, store: CacheStore | None = None,
    telemetry: Telemetry | None = None,
) -> Runtime:
    telemetry = telemetry or Telemetry.from_env()
    metrics = Metrics(telemetry.meter)
    # Built even with the cache off: the client connects lazily, and purge must work while
    # the cache is rolled back, so re-enabling it does not serve records changed meanwhile.
    store = store or build_store(settings, rules.service)
    cache = invalidator = None
    if settings.cache_enabled:
        cache = GuardedStore(
            store,
            Breaker(settings.breaker_failures, settings.breaker_cooldown),
            metrics,
            # Connect + command, with a little slack for the event loop.
            deadline=settings.redis_timeout + settings.redis_connect_timeout,
            warn_interval=settings.warn_interval,
        )
        invalidator = Invalidator(cache, metrics)
    coordinator = Coordinator()
    near = None
    if cache is not None and settings.near_max_bytes > 0:
        near = NearCache(settings.near_max_bytes, metrics.near_flushes.inc)
        # One process, no other replica to hear from: the tier is always in sync, and it
        # spares memory:// hits the decode of the stored bytes. Beside a shared store it is
        # in sync only while the invalidation channel is subscribed (the coordinator).
        near.in_sync = not store.shared
    if cache is not None and store.shared:
        coordinator = RedisCoordinator(
            cache, store, rules.service, lease_seconds=settings.lease_seconds,
            wait_seconds=settings.lease_wait_seconds, near=near)
        assert invalidator is not None
        coordinator.on_remote_invalidation = invalidator.remote  # tickets, flights, near tier
    hasher = CredentialHasher(settings.key_secret, settings.credential_headers)
    jwks = verifier = None
    if settings.jwt_jwks_url is not None:
        assert settings.jwt_issuer is not None and settings.jwt_audience is not None
        jwks = Jwks(settings.jwt_jwks_url, refresh=settings.jwt_jwks_refresh,
                    max_stale=settings.jwt_jwks_max_stale,
                    min_interval=min(_UNKNOWN_KID_INTERVAL_S, settings.jwt_jwks_refresh),
                    warn_interval=settings.warn_interval)
        verifier = TokenVerifier(jwks, issuer=settings.jwt_issuer,
                                 audience=settings.jwt_audience, leeway=settings.jwt_leeway)
    rt = Runtime(
        store=store, coordinator=coordinator, access_log=AccessLog(settings.access_log_sample),
        audit=AuditSink(settings.audit_log, settings.audit_required,
                        on_lost=metrics.audit_failures.inc),
        settings=settings, rules=rules, cache=cache, invalidator=invalidator,
        hasher=hasher, callers=Callers(hasher, verifier), jwks=jwks,
        codec=build_codec(settings.encryption_key, settings.encryption_key_previous),
        metrics=metrics, upstream=Upstream(settings, telemetry), telemetry=telemetry,
        near=near,
    )
    if invalidator is not None:
        invalidator.on_invalidate.append(rt.flights.forget)
        if near is not None:
            invalidator.on_invalidate.append(near.evict)
        invalidator.announce = coordinator.announce
    return rt


def proxy_app(rt: Runtime) -> web.Application:
    app = web.Application(  # bodies stream through, never buffered
        client_max_size=0,
        handler_args=server_logger(rt.metrics.bad_requests, rt.settings.warn_interval))
    app[RUNTIME] = rt
    rt.metrics.rules_loaded(rt.rules.digest)  # the proxy serves them (not a supervisor)
    # [\s\S]: the router sees the decoded path, where `%0A` is a newline `.` would miss.
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle)
    app.cleanup_ctx.append(_resources)
    app.cleanup_ctx.append(_token_keys)
    app.on_shutdown.append(_drain)
    return app


async def _drain(app: web.Application) -> None:
    """Runs when the listener has closed: readiness red, background refreshes stop."""
    rt = app[RUNTIME]
    rt.draining = True
    await rt.flights.cancel_background()


async def _token_keys(app: web.Application) -> AsyncIterator[None]:
    """The JWKS fetcher (its own small client session), when tokens are verified."""
    jwks = app[RUNTIME].jwks
    if jwks is not None:
        await jwks.start()
    yield
    if jwks is not None:
        await jwks.close()


async def _resources(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    if rt.cache is not None:
        await rt.store.start()  # ConfigError for redis:// at a cluster node: not started
    await rt.upstream.start()
    await rt.coordinator.start()
    yield
    rt.draining = True
    await rt.flights.cancel_all()
    if rt.invalidator is not None:
        await rt.invalidator.close()
    await rt.coordinator.close()
    await rt.store.close()
    await rt.upstream.close()
    rt.access_log.flush()
    rt.audit.close()
    rt.telemetry.shutdown()


def build_apps(
    settings: Settings, rules: RuleSet, store: CacheStore | None = None,
    telemetry: Telemetry | None = None,
) -> tuple[web.Application, web.Application]:
    rt = build_runtime(settings, rules, store, telemetry)
    return proxy_app(rt), admin_app(rt)
