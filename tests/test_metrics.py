"""The seed's metric names and labels, on the admin port only, with bounded labels."""

from __future__ import annotations

import os
import time

from prometheus_client.parser import text_string_to_metric_families

from sidecar.version import version
from tests.conftest import TOKEN_A, Stack, StackFactory


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


async def test_seed_metrics_with_key_prefix_labels(stack: Stack) -> None:
    for _ in range(3):
        await stack.proxy.get("/api/v1/patients/42")
    await stack.proxy.get("/api/v1/statistics/dashboard")
    samples = _samples((await stack.admin.get("/metrics", token=None)).body.decode())
    hits = {s[0]["key_prefix"]: s[1] for s in samples["cache_hits_total"]}
    misses = {s[0]["key_prefix"]: s[1] for s in samples["cache_misses_total"]}
    assert hits == {"identity:patient": 2.0}
    assert misses == {"identity:patient": 1.0, "identity:stats": 1.0}
    buckets = [s[0] for s in samples["cache_latency_seconds_bucket"]]
    assert {b["operation"] for b in buckets} >= {"get", "set"}
    assert min(float(b["le"]) for b in buckets) == 0.0001
    durations = samples["sidecar_request_duration_seconds_count"]
    assert ({"rule": "patient", "cache": "HIT", "status": "200"}, 2.0) in durations
    text = (await stack.admin.get("/metrics", token=None)).body.decode()
    assert "# TYPE cache_errors_total counter" in text
    assert "_created" not in text


async def test_seed_hit_ratio_query_is_computable(stack: Stack) -> None:
    for _ in range(4):
        await stack.proxy.get("/api/v1/professionals/5")
    samples = _samples((await stack.admin.get("/metrics", token=None)).body.decode())
    hits = sum(v for _, v in samples["cache_hits_total"])
    misses = sum(v for _, v in samples["cache_misses_total"])
    assert hits / (hits + misses) * 100 == 75.0


async def test_no_ids_or_tokens_in_labels(stack: Stack) -> None:
    for path in ("/api/v1/patients/987654321", "/api/v1/patients/0987654321",
                 "/api/v1/unknown/987654321"):
        await stack.proxy.get(path, token=TOKEN_A)
    text = (await stack.admin.get("/metrics", token=None)).body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for value in sample.labels.values():
                assert "987654321" not in value and "alice" not in value


async def test_metrics_live_on_the_admin_port_only(stack: Stack) -> None:
    reply = await stack.proxy.get("/metrics", token=None)
    assert reply.status == 404 and reply.x_cache == "BYPASS"  # the upstream's answer
    assert (await stack.admin.get("/healthz", token=None)).status == 200
    assert (await stack.admin.get("/readyz", token=None)).json()["status"] == "ready"


async def test_apps_have_separate_registries(make_stack: StackFactory, stack: Stack) -> None:
    other = await make_stack()
    await stack.proxy.get("/api/v1/patients/1")
    text = (await other.admin.get("/metrics", token=None)).body.decode()
    assert "cache_misses_total{" not in text


async def test_process_python_and_build_metrics(stack: Stack) -> None:
    samples = _samples((await stack.admin.get("/metrics", token=None)).body.decode())
    assert version() != "unknown", "the package is installed (make install)"
    assert samples["sidecar_build_info"] == [({"version": version()}, 1.0)]
    ((labels, _),) = samples["python_info"]
    assert labels["implementation"] and labels["major"] == "3"
    ((_, rss),) = samples["process_resident_memory_bytes"]
    assert rss > 1_000_000
    ((_, started),) = samples["process_start_time_seconds"]
    assert time.time() - 3600 < started <= time.time(), "this (the test's) process's start"
    ((_, fds),) = samples["process_open_fds"]
    assert abs(fds - len(os.listdir("/proc/self/fd"))) < 5, "this process's descriptors"


async def test_backend_up_is_there_only_with_the_cache_on(make_stack: StackFactory) -> None:
    on = await make_stack({"REDIS_URL": "memory://"}, redis_url="memory://")
    samples = _samples((await on.admin.get("/metrics", token=None)).body.decode())
    assert samples["cache_backend_up"] == [({"backend": "memory"}, 1.0)]
    off = await make_stack({"CACHE_ENABLED": "false"})
    samples = _samples((await off.admin.get("/metrics", token=None)).body.decode())
    assert "cache_backend_up" not in samples
