"""Caching reverse-proxy sidecar for the identity API.

Data flow, one module per step::

    cli -> settings, rules (config) -> server (listeners, signals, reload) -> app (factory)
    rules -> yaml_marks (YAML with line:column for every key, repeated keys refused)
    server -> listener (client keep-alive and header deadlines, drain within its budget)
    proxy (handler)
      -> matching (rule, key) -> policy (may it use the cache?) -> variants (which copy)
      -> lookup -> guarded_store (deadline, breaker) -> redis_store | memory_store
                -> codec (AES-GCM seal) -> entry (bytes <-> stored response)
      -> hit: responses (replay, 304, Age, Cache-Status)
      -> miss: flights (single-flight) -> fetch -> coordination (cross-replica lease)
               -> upstream (shared client session) -> policy (may it be stored?)
      -> anything else: forward (stream both ways) -> headers (hop-by-hop, X-Forwarded-*)
      -> writes: invalidation (erase what changed, retry while Redis is away)
    metrics, telemetry (OTel), access_log, admin (metrics, probes, purge), reload, errors
"""
