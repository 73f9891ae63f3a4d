"""Caching reverse-proxy sidecar for the identity API.

Data flow, one module per step::

    cli -> settings + rules (config) -> app (factory) -> proxy (handler)
    proxy -> matching (which rule, which key) -> variants (which copy)
          -> guarded_store (deadline, breaker) -> redis_store | memory_store
          -> entry (bytes <-> response) -> policy (may it be stored/served?)
          -> upstream (forward, stream) -> headers (hop-by-hop, X-Forwarded-For)
    metrics, admin (ops port), server (signals, drain)
"""
