"""SIDECAR_WORKERS=2 as real processes: one port, summed metrics, drain, restart, reload, purge.

Which worker a connection lands on is the kernel's choice (SO_REUSEPORT hashes the
connection), so the tests open many connections and look in /proc at which worker holds
each, rather than relying on any one to land anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from sidecar.version import version
from tests.conftest import ROUTES, TOKEN_A
from tests.redis_process import RedisProcess
from tests.sidecar_process import SidecarProcess
from tests.waiting import PATIENCE, until, within
from upstream_stub.app import STATE

AUTH = {"Authorization": TOKEN_A}
PATIENT = "/api/v1/patients/42"
CONNECTIONS = 24  # all on one worker by chance: 2 * 2**-24


def _workers(stub_server: TestServer, redis: RedisProcess, **env: str) -> dict[str, str]:
    # Redis: several workers may not share memory:// (a write would miss the others' copies).
    return {"UPSTREAM_URL": str(stub_server.make_url("")).rstrip("/"), "SIDECAR_WORKERS": "2",
            "REDIS_URL": redis.url, **env}


@contextlib.asynccontextmanager
async def _running(sidecar: SidecarProcess) -> AsyncIterator[SidecarProcess]:
    sidecar.launch()
    try:
        await sidecar.ready()
        yield sidecar
    finally:
        sidecar.stop()


async def _json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as r:
        return r.status, await r.json()


async def _pids(session: aiohttp.ClientSession, sidecar: SidecarProcess) -> list[int]:
    _, health = await _json(session, sidecar.admin + "/healthz")
    return [w["pid"] for w in health["workers"]]


async def _samples(session: aiohttp.ClientSession, sidecar: SidecarProcess) -> dict[str, float]:
    """One scrape: `name{label="v",...}` -> value."""
    async with session.get(sidecar.admin + "/metrics") as r:
        text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def _connections_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    """Established connections to `port` each process holds (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    held = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        links = []
        for fd in fds.iterdir():
            with contextlib.suppress(FileNotFoundError):  # closed meanwhile
                links.append(os.readlink(fd))
        held[pid] = sum(1 for link in links if link.removeprefix("socket:[")[:-1] in inodes)
    return held


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _hits_on_many_connections(sidecar: SidecarProcess, n: int) -> list[aiohttp.ClientSession]:
    """`n` requests, each on its own kept-alive connection; every one must be a HIT."""
    sessions = [aiohttp.ClientSession() for _ in range(n)]

    async def one(s: aiohttp.ClientSession) -> str | None:
        async with s.get(sidecar.base + PATIENT, headers=AUTH) as r:
            await r.read()
            return r.headers.get("X-Cache")
    assert await asyncio.gather(*(one(s) for s in sessions)) == ["HIT"] * n
    return sessions


async def _hits_primed(sidecar: SidecarProcess) -> list[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as first, first.get(sidecar.base + PATIENT,
                                                            headers=AUTH) as r:
        assert r.status == 200
    return await _hits_on_many_connections(sidecar, CONNECTIONS)


async def test_two_workers_serve_one_port_and_one_scrape_sums_their_counts(
    stub_server: TestServer, session: aiohttp.ClientSession, redis_client: Redis,
    shared_redis: RedisProcess,
) -> None:
    env = _workers(stub_server, shared_redis)
    async with _running(SidecarProcess(env)) as sidecar:
        pids = await _pids(session, sidecar)
        assert len(set(pids)) == 2 and sidecar.proc is not None and sidecar.proc.pid not in pids
        async with session.get(sidecar.base + PATIENT, headers=AUTH) as r:
            assert r.headers["X-Cache"] == "MISS"
        sessions = await _hits_on_many_connections(sidecar, CONNECTIONS)
        try:
            held = _connections_by_pid(sidecar.port, pids)
            # (`session` keeps the priming request's connection too)
            assert sum(held.values()) >= CONNECTIONS and all(held.values()), held
            metrics = await _samples(session, sidecar)
        finally:
            await asyncio.gather(*(s.close() for s in sessions))
        assert metrics['cache_hits_total{key_prefix="identity:patient"}'] == CONNECTIONS
        assert metrics['cache_misses_total{key_prefix="identity:patient"}'] == 1
        assert metrics["cache_breaker_open{}"] == 0  # livemax: one series, not one per pid
        assert metrics['cache_backend_up{backend="redis"}'] == 1  # livemin: one series
        assert [k for k in metrics if k.startswith("sidecar_build_info{")] == [
            f'sidecar_build_info{{version="{version()}"}}']
        assert len([k for k in metrics if k.startswith("python_info{")]) == 1
        # process_* per process, labelled by slot (bounded), not one unlabelled series
        rss = {k for k in metrics if k.startswith("process_resident_memory_bytes")}
        assert rss == {f'process_resident_memory_bytes{{worker="{w}"}}'
                       for w in ("supervisor", "0", "1")}
        cpu = {k: v for k, v in metrics.items() if k.startswith("process_cpu_seconds_total")}
        assert len(cpu) == 3 and all(v > 0 for v in cpu.values())
        _, ready = await _json(session, sidecar.admin + "/readyz")
        assert sorted(w["pid"] for w in ready["workers"]) == sorted(pids)
        assert {w["status"] for w in ready["workers"]} == {"ready"}


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    stub_server: TestServer, session: aiohttp.ClientSession, shared_redis: RedisProcess,
) -> None:
    sidecar = SidecarProcess(_workers(stub_server, shared_redis,
                                      SIDECAR_SHUTDOWN_TIMEOUT_S="20"))
    async with _running(sidecar):
        pids = await _pids(session, sidecar)
        clients = [aiohttp.ClientSession() for _ in range(CONNECTIONS)]
        try:
            slow = [asyncio.ensure_future(c.get(sidecar.base + "/api/v1/slow?ms=4000"))
                    for c in clients]
            await within(stub_server.app[STATE].wait_for("GET /api/v1/slow", count=CONNECTIONS),
                         "every slow request reaching the upstream")
            sidecar.signal(signal.SIGTERM)

            async def draining() -> bool:  # readiness red while the requests drain
                return await _json(session, sidecar.admin + "/readyz") == (
                    503, {"status": "draining"})
            await until(draining, "/readyz answering 503 after SIGTERM", every=0.01)
            assert not any(request.done() for request in slow)
            for request in slow:
                async with await request as r:
                    assert r.status == 200 and (await r.json()) == {"slept_ms": 4000}
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        assert await sidecar.exit_code(within=PATIENCE) == 0
        lines = sidecar.log_lines()
    drained = [line for line in lines if line.get("listener") == "proxy"]
    assert sorted(d["pid"] for d in drained) == sorted(pids)
    assert sum(d["in_flight"] for d in drained) == CONNECTIONS
    assert {d["cut_requests"] for d in drained} == {0}
    stopped = [line for line in lines if line["msg"] == "worker stopped"]
    assert sorted((s["pid"], s["returncode"]) for s in stopped) == [
        (pid, 0) for pid in sorted(pids)]
    assert lines[-1]["msg"] == "stopped" and lines[-1]["clean"] is True


async def test_a_killed_worker_is_replaced_and_its_counts_stay_in_the_sum(
    stub_server: TestServer, session: aiohttp.ClientSession, redis_client: Redis,
    shared_redis: RedisProcess,
) -> None:
    env = _workers(stub_server, shared_redis)
    async with _running(SidecarProcess(env)) as sidecar:
        pids = await _pids(session, sidecar)
        async with session.get(sidecar.base + PATIENT, headers=AUTH) as r:
            assert r.headers["X-Cache"] == "MISS"
        sessions = await _hits_on_many_connections(sidecar, CONNECTIONS)
        await asyncio.gather(*(s.close() for s in sessions))
        os.kill(pids[0], signal.SIGKILL)

        async def replaced() -> bool:
            _, health = await _json(session, sidecar.admin + "/healthz")
            first = health["workers"][0]
            return first["pid"] not in (None, pids[0]) and first["restarts"] == 1
        await until(replaced, "worker 0 running again under a new pid")
        await sidecar.ready()
        new_pids = await _pids(session, sidecar)
        assert new_pids[1] == pids[1] and new_pids[0] != pids[0]
        metrics = await _samples(session, sidecar)
        assert metrics['cache_hits_total{key_prefix="identity:patient"}'] == CONNECTIONS
        sidecar.signal(signal.SIGTERM)
        assert await sidecar.exit_code(within=PATIENCE) == 0
        lines = sidecar.log_lines()
    exits = [line for line in lines if line["msg"] == "worker exited: restarting it"]
    assert len(exits) == 1
    assert {k: exits[0][k] for k in ("worker", "pid", "returncode", "signal", "level")} == {
        "worker": 0, "pid": pids[0], "returncode": -9, "signal": "SIGKILL", "level": "error"}
    # Dead young (the usual case here): the backoff's first step; after a stable run: at once.
    assert exits[0]["restart_in_s"] == (1.0 if exits[0]["uptime_s"] < 30 else 0.0)


async def test_sighup_reloads_the_rules_in_every_worker(
    stub_server: TestServer, session: aiohttp.ClientSession, tmp_path: Path,
    shared_redis: RedisProcess,
) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.read_text())
    env = _workers(stub_server, shared_redis, SIDECAR_RELOAD_INTERVAL_S="3600")
    async with _running(SidecarProcess(env, config)) as sidecar:
        old = (await _samples(session, sidecar))
        (old_hash,) = [k for k in old if k.startswith("config_info")]
        config.write_text(ROUTES.read_text().replace(
            "ttl: 600\n    ttl_env: CACHE_TTL_PATIENT", "ttl: 30\n    ttl_env: CACHE_TTL_PATIENT"))
        sidecar.signal(signal.SIGHUP)

        async def reloaded() -> bool:  # counted once per worker
            return (await _samples(session, sidecar)).get(
                'config_reload_total{result="ok"}') == 2
        await until(reloaded, "both workers reloading")
        infos = {k: v for k, v in (await _samples(session, sidecar)).items()
                 if k.startswith("config_info")}
        assert len(infos) == 2 and infos.pop(old_hash) == 0 and list(infos.values()) == [1]
        # Every worker has the new TTL: a stored entry's TTL is never above 30 s.
        clients = [aiohttp.ClientSession() for _ in range(CONNECTIONS)]
        try:
            for c in clients:
                async with c.get(sidecar.base + "/api/v1/patients/7", headers=AUTH) as r:
                    assert r.status == 200
                    if r.headers["X-Cache"] == "HIT":
                        assert int(r.headers["Cache-Status"].rsplit("ttl=", 1)[1]) <= 30
        finally:
            await asyncio.gather(*(c.close() for c in clients))


async def test_a_purge_is_counted_once_and_erased_in_every_worker(
    stub_server: TestServer, session: aiohttp.ClientSession, shared_redis: RedisProcess,
    redis_client: Redis,  # flushed: the first request must be this test's only miss
) -> None:
    async with _running(SidecarProcess(_workers(stub_server, shared_redis))) as sidecar:
        sessions = await _hits_primed(sidecar)  # both workers now hold a near-tier copy
        try:
            async with session.delete(sidecar.admin + "/cache/identity:patient:42") as r:
                assert (r.status, await r.json()) == (200, {"scope": "key", "removed": 1})
            metrics = await _samples(session, sidecar)
            assert metrics['cache_purges_total{result="ok",scope="key"}'] == 1
            for s in sessions:  # no worker answers from a copy older than the purge
                async with s.get(sidecar.base + PATIENT, headers=AUTH) as r:
                    assert r.status == 200
            assert (await _samples(session, sidecar))[
                'cache_misses_total{key_prefix="identity:patient"}'] == 2
        finally:
            await asyncio.gather(*(s.close() for s in sessions))
        lines = sidecar.log_lines()
    assert sum(1 for line in lines if line.get("event") == "cache_purge") == 1
