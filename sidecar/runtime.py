"""Everything a request handler needs, built once per app (no import-time globals)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from sidecar.access_log import AccessLog
from sidecar.audit import AuditSink
from sidecar.codec import Codec
from sidecar.coordination import Coordinator
from sidecar.fetched import Fetched
from sidecar.flights import Flights
from sidecar.guarded_store import GuardedStore
from sidecar.invalidation import Invalidator
from sidecar.jwks import Jwks
from sidecar.metrics import Metrics
from sidecar.near_cache import NearCache
from sidecar.request_ids import RequestIds
from sidecar.rules import RuleSet
from sidecar.settings import Settings
from sidecar.sharing import Callers
from sidecar.store import CacheStore
from sidecar.telemetry import Telemetry
from sidecar.upstream import Upstream
from sidecar.variants import CredentialHasher


@dataclass(eq=False)
class Runtime:
    settings: Settings
    rules: RuleSet  # replaced whole on reload; a request keeps the one it started with
    store: CacheStore  # the backend itself; only purge uses it directly
    cache: GuardedStore | None  # the request path's view; None when CACHE_ENABLED=false
    invalidator: Invalidator | None
    hasher: CredentialHasher
    callers: Callers  # which variant a caller uses, and its audit subject
    codec: Codec
    metrics: Metrics
    upstream: Upstream
    coordinator: Coordinator
    telemetry: Telemetry
    access_log: AccessLog
    audit: AuditSink
    flights: Flights[Fetched] = field(default_factory=Flights)
    request_ids: RequestIds = field(default_factory=RequestIds)
    near: NearCache | None = None  # the in-process tier in front of Redis
    jwks: Jwks | None = None  # the token keys, when CACHE_JWT_JWKS_URL is set
    clock: Callable[[], float] = time.time
    draining: bool = False


RUNTIME = web.AppKey("runtime", Runtime)
