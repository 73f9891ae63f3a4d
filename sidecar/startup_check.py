"""One log line at start-up saying whether Redis and the upstream answered.

It runs in the background once the listeners are up, so it never delays or fails the start:
Redis gets one PING under its budget; the upstream gets TCP connects (nothing is sent) for up
to `UPSTREAM_WAIT_S`, because in the shipped Deployment the app container is started only
after the sidecar is ready, so a first refusal there is expected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from yarl import URL

from sidecar.settings import Settings
from sidecar.store import CacheStore

log = logging.getLogger("sidecar")
UPSTREAM_WAIT_S = 30.0
RETRY_S = 0.25
REDIS_FLOOR_S = 1.0  # a first connection (TLS, AUTH) may take longer than one command


async def redis_answer(store: CacheStore, budget: float) -> str:
    try:
        async with asyncio.timeout(budget):
            await store.ping()
    except TimeoutError:
        return "timeout"
    except Exception as exc:  # any failure is reported, never raised: start-up goes on
        return f"error: {type(exc).__name__}"
    return "ok"


async def _connect(host: str, port: int, budget: float) -> str:
    try:
        async with asyncio.timeout(budget):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {type(exc).__name__}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return "ok"


async def upstream_answer(url: str, budget: float, wait: float) -> tuple[str, float]:
    """(outcome of the last connect, seconds until it): retried until it answers or `wait`."""
    target = URL(url)
    host, port = target.host or "127.0.0.1", target.port or 80
    start = time.monotonic()
    while True:
        outcome = await _connect(host, port, budget)
        elapsed = time.monotonic() - start
        if outcome == "ok" or elapsed + RETRY_S >= wait:
            return outcome, round(elapsed, 3)
        await asyncio.sleep(RETRY_S)  # pacing the retries while the app starts


async def check(settings: Settings, store: CacheStore,
                upstream_wait: float = UPSTREAM_WAIT_S) -> None:
    budget = max(REDIS_FLOOR_S, settings.redis_timeout + settings.redis_connect_timeout)
    redis, (upstream, after) = await asyncio.gather(
        redis_answer(store, budget),
        upstream_answer(settings.upstream_url, settings.upstream_connect_timeout,
                        upstream_wait))
    fine = redis == "ok" and upstream == "ok"
    log.log(logging.INFO if fine else logging.WARNING,
            "start-up check: Redis and the upstream answered" if fine else
            "start-up check: not everything answered (serving anyway; the cache fails open)",
            extra={"redis": redis, "cache_backend": store.name, "upstream": upstream,
                   "upstream_after_s": after, "cache_enabled": settings.cache_enabled})
