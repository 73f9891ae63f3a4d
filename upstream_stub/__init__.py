"""Stand-in for the identity API (FastAPI + PostgreSQL + HAPI FHIR) for demos, tests and benches.

Deterministic, tunable (latency, error rate) and instrumented (hit counters, test hooks), so
the sidecar can be exercised without the real backends.
"""
