"""The request path's counts, added once per loop iteration (Metrics.flush): a scrape shows
exactly what one-at-a-time updates would have shown."""

from __future__ import annotations

import asyncio
import random

from prometheus_client import generate_latest

from sidecar.metrics import REQUEST_BUCKETS, Metrics


def _family(metrics: Metrics, name: str) -> list[str]:
    return [line for line in generate_latest(metrics.registry).decode().splitlines()
            if line.startswith(name)]


async def test_batched_durations_scrape_as_one_observe_each() -> None:
    rng = random.Random(7)
    # every bucket, its exact bounds, and past the last one
    values = [*REQUEST_BUCKETS, 0.0, 45.0, *(rng.uniform(0, 12) for _ in range(500))]
    batched, direct = Metrics(), Metrics()
    for i, seconds in enumerate(values):
        cache = "HIT" if i % 3 else "MISS"
        batched.request_time("patient", cache, 200, seconds)
        direct.requests.labels("patient", cache, "200").observe(seconds)
    batched.flush()
    name = "sidecar_request_duration_seconds"
    assert _family(batched, name) == _family(direct, name)


async def test_a_scrape_shows_the_hits_of_the_iteration_it_runs_in() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.hit("identity:patient")
        metrics.near_hit("identity:patient")
    metrics.flush()  # what the admin port's /metrics does first
    assert 'cache_hits_total{key_prefix="identity:patient"} 3.0' in _family(metrics, "cache_hits")
    metrics.hit("identity:patient")
    await asyncio.sleep(0)  # the end of this iteration: flushed without a scrape
    assert 'cache_hits_total{key_prefix="identity:patient"} 4.0' in _family(metrics, "cache_hits")
    assert ('cache_near_hits_total{key_prefix="identity:patient"} 3.0'
            in _family(metrics, "cache_near_hits"))


def test_without_a_loop_counts_are_added_at_once() -> None:
    metrics = Metrics()
    metrics.hit("identity:patient")
    assert 'cache_hits_total{key_prefix="identity:patient"} 1.0' in _family(metrics, "cache_hits")
