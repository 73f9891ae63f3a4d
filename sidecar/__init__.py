"""Caching reverse-proxy sidecar for the identity API.

Data flow, one module per step::

    cli -> settings, rules (config) -> server (listeners, signals, reload) -> app (factory)
    rules -> yaml_marks (YAML with line:column for every key, repeated keys refused)
    server -> listener (client keep-alive and header deadlines, drain within its budget)
    SIDECAR_WORKERS > 1: cli -> supervisor (metrics dir) -> pool (workers, admin port)
                         -> N x server with worker (SO_REUSEPORT, control socket, lifeline)
    proxy (handler)
      -> matching (rule, key) -> policy (may it use the cache?) -> variants (which copy)
         -> sharing (a verified caller of a `share:` rule: the shared copy)
            -> tokens (PyJWT, results remembered) -> jwks (keys fetched async, cached)
      -> lookup -> near_cache (in-process tier, evicted by coordination's channel)
                -> guarded_store (deadline, breaker) -> redis_store (read_batcher) | memory_store
                -> codec (AES-GCM seal) -> entry (bytes <-> stored response)
      -> hit: audit (one line per cached read on `audit: true` rules)
              -> responses (replay, 304, Age, Cache-Status)
      -> miss: flights (single-flight) -> fetch -> coordination (cross-replica lease)
               -> upstream (shared client session, upstream_framing) -> policy (storable?)
      -> anything else: forward (stream both ways) -> headers (hop-by-hop, X-Forwarded-*)
      -> writes: invalidation (erase what changed, retry while Redis is away)
    request_ids (X-Request-ID in, upstream, out), metrics, telemetry (OTel), access_log
    (batched JSON lines), admin (metrics, probes, purge), bad_requests (parser errors
    counted, logged rate-limited), reload, errors
"""
