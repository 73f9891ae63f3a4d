"""The real process: graceful drain on SIGTERM, hot reload by file change and SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from tests.conftest import ROUTES, TOKEN_A
from tests.redis_process import RedisProcess
from tests.sidecar_process import SidecarProcess
from tests.waiting import PATIENCE, until, within
from upstream_stub.app import STATE

AUTH = {"Authorization": TOKEN_A}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _upstream(stub_server: TestServer) -> dict[str, str]:
    return {"UPSTREAM_URL": str(stub_server.make_url("")).rstrip("/")}


async def _metric(session: aiohttp.ClientSession, sidecar: SidecarProcess, line: str) -> None:
    """Until the admin port reports `line` (the reload happened in another process)."""
    async def reported() -> bool:
        async with session.get(sidecar.admin + "/metrics") as r:
            return line in await r.text()
    await until(reported, f"/metrics showing {line!r}")


async def _ttl(session: aiohttp.ClientSession, sidecar: SidecarProcess, pid: int) -> int:
    path = f"/api/v1/patients/{pid}"
    async with session.get(sidecar.base + path, headers=AUTH) as r:
        assert r.status == 200
    async with session.get(sidecar.base + path, headers=AUTH) as r:
        assert r.headers["X-Cache"] == "HIT"
        return int(r.headers["Cache-Status"].rsplit("ttl=", 1)[1])


async def test_sigterm_drains_in_flight_requests(
    stub_server: TestServer, session: aiohttp.ClientSession, redis_client: Redis,
    shared_redis: RedisProcess,
) -> None:
    # The slow request outlasts the signal and the readiness polls on a busy machine, and
    # the drain budget outlasts every request in flight.
    sidecar = SidecarProcess({**_upstream(stub_server), "SIDECAR_SHUTDOWN_TIMEOUT_S": "20",
                              "REDIS_URL": shared_redis.url,
                              "CACHE_KEY_SECRET": "s3cret-value-xyz"})
    sidecar.launch()
    await sidecar.ready()
    try:
        slow = asyncio.ensure_future(session.get(sidecar.base + "/api/v1/slow?ms=4000"))
        stream = asyncio.ensure_future(
            session.get(sidecar.base + "/api/v1/stream?chunks=15&delay_ms=100"))
        cached = asyncio.ensure_future(session.get(
            sidecar.base + "/api/v1/patients/42", headers={**AUTH, "X-Stub-Delay-Ms": "1000"}))
        await within(stub_server.app[STATE].wait_for(
            "GET /api/v1/slow", "GET /api/v1/stream", "GET /api/v1/patients/42"),
            "the three requests reaching the upstream")
        sidecar.signal(signal.SIGTERM)

        async def unready() -> bool:  # readiness goes red while the slow request drains
            async with session.get(sidecar.admin + "/readyz") as r:
                return r.status == 503
        await until(unready, "/readyz answering 503 after SIGTERM", every=0.01)
        assert not slow.done()
        async with await slow as r:
            assert r.status == 200 and (await r.json()) == {"slept_ms": 4000}
        async with await stream as r:
            assert len(await r.read()) == 15 * 1024
        async with await cached as r:  # a cache miss in flight: answered and stored
            assert r.status == 200 and r.headers["X-Cache"] == "MISS"
        assert await redis_client.exists("identity:patient:42") == 1
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(sidecar.base + "/api/v1/slow?ms=1"):
                pass
        assert await sidecar.exit_code(within=PATIENCE) == 0
    finally:
        sidecar.stop()
    log = sidecar.output()
    assert "draining" in log and '"stopped"' in log
    assert log.count("holds response bodies in clear text") == 1
    startup = json.loads(next(line for line in log.splitlines() if "sidecar listening" in line))
    assert startup["settings"]["key_secret"] == "set"
    assert startup["event_loop"] == "uvloop"  # the default
    assert [(r["name"], r["ttl"]) for r in startup["rules"]] == [
        ("patient", 600), ("professional", 600), ("stats-dashboard", 300)]
    assert "s3cret-value-xyz" not in log



@pytest.fixture
async def silent_upstream() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An upstream on a free port that reads each request and never answers it."""
    received = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            received.set()
            await reader.read()  # until the sidecar gives up on it

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", received
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_sigterm_cuts_a_request_that_outlives_the_budget_once_and_counts_it(
    silent_upstream: tuple[str, asyncio.Event], session: aiohttp.ClientSession,
) -> None:
    # aiohttp alone waits the budget, cancels, then waits it again: 8 s here. Once the
    # budget plus the cancellation grace is ~4.5 s; 6.5 s leaves slack for a busy machine.
    upstream, received = silent_upstream
    budget = 4.0
    sidecar = SidecarProcess({"UPSTREAM_URL": upstream, "UPSTREAM_READ_TIMEOUT_S": "60",
                              "SIDECAR_SHUTDOWN_TIMEOUT_S": str(budget)})
    sidecar.launch()
    await sidecar.ready()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(b"GET /api/v1/slow?ms=1 HTTP/1.1\r\nHost: sidecar\r\n\r\n")
        await asyncio.wait_for(received.wait(), 10)  # the request is at the upstream
        signalled = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        readiness = 200
        while readiness == 200:  # readiness still goes red first
            async with session.get(sidecar.admin + "/readyz") as r:
                readiness = r.status
        assert readiness == 503
        assert await sidecar.exit_code(within=30) == 0
        took = time.monotonic() - signalled
        assert budget - 0.5 < took < 6.5, took
        assert await reader.read() == b""  # cut: closed without an answer
        writer.close()
    finally:
        sidecar.stop()
    lines = [json.loads(line) for line in sidecar.output().splitlines() if line.startswith("{")]
    drained = [line for line in lines if "cut_requests" in line]
    assert [(d["listener"], d["in_flight"], d["cut_requests"], d["level"]) for d in drained] == [
        ("proxy", 1, 1, "warning"), ("admin", 0, 0, "info")]

async def test_reload_on_file_change_and_rejection_keeps_the_last_good_rules(
    stub_server: TestServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.read_text())
    sidecar = SidecarProcess({**_upstream(stub_server), "SIDECAR_RELOAD_INTERVAL_S": "0.1"},
                             config)
    sidecar.launch()
    await sidecar.ready()
    try:
        assert 590 < await _ttl(session, sidecar, 1) <= 600
        config.write_text(ROUTES.read_text().replace("ttl: 600\n    ttl_env: CACHE_TTL_PATIENT",
                                                     "ttl: 60\n    ttl_env: CACHE_TTL_PATIENT"))
        await _metric(session, sidecar, 'config_reload_total{result="ok"} 1.0')
        new_hash = hashlib.sha256(config.read_bytes()).hexdigest()[:16]
        await _metric(session, sidecar, f'config_info{{hash="{new_hash}"}} 1.0')
        assert await _ttl(session, sidecar, 2) <= 60
        config.write_text("rules: [{name: broken, path: nope}]\n")
        await _metric(session, sidecar, 'config_reload_total{result="rejected"} 1.0')
        async with session.get(sidecar.admin + "/readyz") as r:
            assert r.status == 200
        assert await _ttl(session, sidecar, 3) <= 60  # the last good rules are in force
    finally:
        sidecar.stop()
    assert "rules reload rejected" in sidecar.output()


async def test_reload_survives_a_configmap_symlink_swap_and_sighup(
    stub_server: TestServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Kubernetes updates a ConfigMap directory by swapping the `..data` symlink."""
    first, second = tmp_path / "..2026_01", tmp_path / "..2026_02"
    first.mkdir()
    second.mkdir()
    (first / "routes.yaml").write_text(ROUTES.read_text())
    os.symlink(first.name, tmp_path / "..data")
    os.symlink("..data/routes.yaml", tmp_path / "routes.yaml")
    sidecar = SidecarProcess({**_upstream(stub_server), "SIDECAR_RELOAD_INTERVAL_S": "3600"},
                             tmp_path / "routes.yaml")
    sidecar.launch()
    await sidecar.ready()
    try:
        (second / "routes.yaml").write_text(ROUTES.read_text().replace(
            "ttl: 600\n    ttl_env: CACHE_TTL_PATIENT", "ttl: 30\n    ttl_env: CACHE_TTL_PATIENT"))
        os.symlink(second.name, tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # the atomic swap
        sidecar.signal(signal.SIGHUP)
        await _metric(session, sidecar, 'config_reload_total{result="ok"} 1.0')
        assert await _ttl(session, sidecar, 4) <= 30
    finally:
        sidecar.stop()


def _count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _lines(path: Path, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return _count(path) == count
    return check


async def test_sighup_reopens_a_rotated_audit_file(
    stub_server: TestServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    log = tmp_path / "audit.log"
    sidecar = SidecarProcess({**_upstream(stub_server), "CACHE_AUDIT_LOG": str(log),
                              "SIDECAR_RELOAD_INTERVAL_S": "3600"}, ROUTES)
    sidecar.launch()
    await sidecar.ready()
    try:
        await _ttl(session, sidecar, 5)  # a miss, then a hit: one audit line
        # Written at the end of the loop iteration that answered (audit.py): poll for it.
        await until(_lines(log, 1), "the hit's audit line")
        log.rename(tmp_path / "audit.log.1")  # logrotate's `create`
        sidecar.signal(signal.SIGHUP)
        await _metric(session, sidecar, 'config_reload_total{result="ok"} 1.0')
        async with session.get(sidecar.base + "/api/v1/patients/5", headers=AUTH) as r:
            assert r.headers["X-Cache"] == "HIT"
        await until(_lines(log, 1), "the new file got the new line")
        assert len((tmp_path / "audit.log.1").read_text().splitlines()) == 1
    finally:
        sidecar.stop()


async def test_the_standard_library_loop_is_one_setting_away(
    stub_server: TestServer, session: aiohttp.ClientSession,
) -> None:
    sidecar = SidecarProcess({**_upstream(stub_server), "SIDECAR_EVENT_LOOP": "asyncio"})
    sidecar.launch()
    try:
        await sidecar.ready()
        assert await _ttl(session, sidecar, 7) > 0  # a miss, then a hit from the near tier
    finally:
        sidecar.stop()
    startup = next(r for r in sidecar.log_lines() if r.get("msg") == "sidecar listening")
    assert startup["event_loop"] == "asyncio"
