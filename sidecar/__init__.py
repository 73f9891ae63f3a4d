"""Caching reverse-proxy sidecar for the identity API.

Data flow, one module per step::

    cli -> settings, rules (config) -> event_loop (uvloop unless SIDECAR_EVENT_LOOP=asyncio)
        -> server (listeners, signals, reload) -> app (factory)
    rules -> yaml_marks (YAML with line:column for every key, repeated keys refused)
    server -> listener (client keep-alive and header deadlines, drain within its budget)
              -> fast_hit (a plain GET fresh in the near tier, answered as it is parsed,
                 with the same decisions; anything else goes on to proxy, in order)
           -> startup_check (one line: did Redis and the upstream answer?)
           -> gc_tuning (startup frozen, a larger first generation: short collector pauses)
    SIDECAR_WORKERS > 1: cli -> supervisor (metrics dir, process_metrics) -> pool
                         -> N x server with worker (SO_REUSEPORT, control socket, lifeline)
    proxy (handler; carries out what decisions says; it holds the runtime, and each step
           below gets only its part: lookup the `Tiers`, fetch the `Filler`, forward the
           `Passage`)
      -> matching (rule, key) -> policy (may it use the cache?) -> variants (which copy)
         -> sharing (a verified caller of a `share:` rule: the shared copy)
            -> tokens (PyJWT, results remembered) -> jwks (keys fetched async, cached)
      -> lookup -> near_cache (in-process tier, evicted by coordination's channel)
                -> guarded_store (deadline, breaker) -> store (the backend seam)
                   -> redis_store (read_batcher) | redis_ha (Sentinel, Cluster; redis_url)
                      | memory_store
                -> codec (AES-GCM seal) -> entry (bytes <-> stored response)
      -> decisions (pure: Fresh | ServeStale | Miss; Store | NotStored | Refresh)
         -> freshness (`mode: rfc9111`: the origin's lifetime, the request's terms)
      -> hit: audit (one line per cached read on `audit: true` rules)
              -> responses (replay, 304, Age, Cache-Status) -> wire (one-buffer answer)
      -> miss: flights (single-flight) -> fetch -> coordination (cross-replica lease)
               -> revalidation (conditional GET, 304 header update) -> fetched (results)
               -> upstream (shared client session, upstream_framing)
      -> anything else: forward (stream both ways) -> headers (hop-by-hop, X-Forwarded-*)
      -> writes: invalidation (erase what changed, retry while Redis is away)
    request_ids (X-Request-ID in, upstream, out), metrics, telemetry (OTel), access_log
    (batched JSON lines), admin (metrics, probes, purge), bad_requests (parser errors
    counted, logged rate-limited), reload, errors, logs, breaker, version
"""
