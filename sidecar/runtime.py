"""Everything the request path needs, built once per app (no import-time globals).

The handler (proxy.py) composes the steps; each step gets only its part: a lookup the
`Tiers`, a fill the `Filler`, a pass-through the `Passage`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from sidecar.access_log import AccessLog
from sidecar.audit import AuditSink
from sidecar.codec import Codec
from sidecar.coordination import Coordinator
from sidecar.fetch import Filler
from sidecar.fetched import Fetched
from sidecar.flights import Flights
from sidecar.forward import Passage
from sidecar.guarded_store import GuardedStore
from sidecar.invalidation import Invalidator
from sidecar.jwks import Jwks
from sidecar.lookup import Decoded, Tiers
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
    tiers: Tiers | None = field(init=False, default=None)  # None when CACHE_ENABLED=false
    filler: Filler | None = field(init=False, default=None)
    passage: Passage = field(init=False)

    def __post_init__(self) -> None:
        self.passage = Passage(self.upstream, self.metrics, self.settings.public_origin)
        if self.cache is not None and self.invalidator is not None:
            self.tiers = Tiers(self.cache, self.invalidator, self.near, self.codec,
                               self.metrics, self.telemetry, self.clock,
                               Decoded() if self.near is None else None)
            self.filler = Filler(self.tiers, self.upstream, self.coordinator,
                                 self.settings.max_body_bytes,
                                 self.settings.upstream_fill_timeout)

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Tests move time: the handler and the tiers read the same clock."""
        self.clock = clock
        if self.tiers is not None:
            self.tiers.clock = clock


RUNTIME = web.AppKey("runtime", Runtime)
