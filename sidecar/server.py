"""Run the proxy and admin listeners; reload on SIGHUP; drain on SIGTERM.

Shutdown order matters on Kubernetes: readiness goes red first, then the listener closes,
in-flight requests (cached or streaming) get `SIDECAR_SHUTDOWN_TIMEOUT_S` to finish (once:
those still running are then cut and counted, see `listener.py`), background refreshes are
cancelled, and only then Redis and upstream connections close. Once listening, one
background check logs whether Redis and the upstream answer (`startup_check.py`). Both
listeners close idle connections and slow header senders (`SIDECAR_KEEPALIVE_TIMEOUT_S`,
`SIDECAR_HEADER_TIMEOUT_S`).

As one of `SIDECAR_WORKERS` > 1 (`worker` given): the proxy port is shared (`SO_REUSEPORT`)
and the admin app listens on the supervisor's control socket instead (`worker.py`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from functools import partial
from pathlib import Path

from aiohttp import web

from sidecar import gc_tuning, startup_check
from sidecar.app import build_apps
from sidecar.fast_hit import FastHits
from sidecar.listener import ADMIN_DRAIN_S, BoundedRunner
from sidecar.proxy import direct
from sidecar.reload import Reloader
from sidecar.rules import RuleSet
from sidecar.runtime import RUNTIME
from sidecar.settings import Settings
from sidecar.worker import WorkerLink, add_control_routes, watch_lifeline

log = logging.getLogger("sidecar")


async def serve(settings: Settings, rules: RuleSet, rules_path: Path,
                worker: WorkerLink | None = None) -> None:
    proxy, admin = build_apps(settings, rules)
    if worker is not None:
        add_control_routes(admin)
    rt = proxy[RUNTIME]
    keepalive, header = settings.keepalive_timeout, settings.header_timeout
    proxy_runner = BoundedRunner(proxy, listener="proxy", direct=partial(direct, rt),
                                 fast=FastHits(rt).answer,
                                 shutdown_timeout=settings.shutdown_timeout,
                                 keepalive_timeout=keepalive, header_timeout=header)
    admin_runner = BoundedRunner(admin, listener="admin", shutdown_timeout=ADMIN_DRAIN_S,
                                 keepalive_timeout=keepalive, header_timeout=header)
    await proxy_runner.setup()
    await admin_runner.setup()
    try:
        if worker is None:
            await web.TCPSite(admin_runner, settings.admin_host, settings.admin_port).start()
            await web.TCPSite(proxy_runner, settings.host, settings.port).start()
        else:  # the control socket last: once it answers, this worker accepts connections
            await web.TCPSite(proxy_runner, settings.host, settings.port,
                              reuse_port=True).start()
            await web.UnixSite(admin_runner, str(worker.socket)).start()
    except OSError:  # a port in use: close what setup opened (the upstream session), then say so
        await proxy_runner.cleanup()
        await admin_runner.cleanup()
        raise
    gc_tuning.tune()  # serving: startup's objects are permanent, collector pauses short
    _log_startup(settings, rules, rt.codec.encrypted, rt.hasher.shared)
    probe = asyncio.ensure_future(startup_check.check(settings, rt.store))

    reloader = Reloader(rt, rules_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def on_sighup() -> None:
        rt.audit.close()  # reopened by the next line: a rotated audit file (logrotate)
        reloader.reload("sighup")

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if worker is not None:
        watch_lifeline(worker, stop)
    poller = asyncio.ensure_future(reloader.poll(settings.reload_interval))
    try:
        await stop.wait()
    finally:
        log.info("shutting down: draining in-flight requests",
                 extra={"timeout_s": settings.shutdown_timeout})
        rt.draining = True
        poller.cancel()
        probe.cancel()
        await asyncio.gather(poller, probe, return_exceptions=True)
        await proxy_runner.cleanup()
        await admin_runner.cleanup()
        log.info("stopped")


def _log_startup(settings: Settings, rules: RuleSet, encrypted: bool, shared: bool) -> None:
    log.info("sidecar listening", extra={
        "settings": settings.describe(),
        # the loop really running (SIDECAR_EVENT_LOOP may have fallen back): uvloop, asyncio
        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "rules_file": rules.source, "rules_hash": rules.digest,
        "rules": [{"name": r.name, "path": r.path, "key": r.key, "ttl": r.ttl,
                   "ttl_env": r.ttl_env, "stale": [r.stale.while_revalidate,
                                                    r.stale.if_error, r.stale.max]}
                  for r in rules.rules],
    })
    if not settings.cache_enabled:
        log.warning("CACHE_ENABLED=false: every request goes to the upstream (BYPASS)")
    elif not encrypted:
        log.warning("CACHE_ENCRYPTION_KEY is not set: the cache holds response bodies in "
                    "clear text")
    for rule in rules.rules:
        if rule.share is not None and settings.jwt_jwks_url is None:
            log.warning("a rule has share: but CACHE_JWT_JWKS_URL is not set: no caller is "
                        "shared", extra={"rule": rule.name})
    if settings.cache_enabled and not shared:
        log.warning("CACHE_KEY_SECRET is not set: a random per-process secret is used, so "
                    "replicas and restarts do not share entries of authenticated callers")
