"""Start-up says whether Redis and the upstream answered (never delaying or failing it),
and a refused upstream is a rate-limited warning, not only a 502 in the access line."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from sidecar.app import build_store
from sidecar.settings import Settings
from sidecar.startup_check import check
from tests.conftest import StackFactory
from tests.redis_process import RedisProcess, free_port
from tests.sidecar_process import SidecarProcess
from tests.waiting import within


async def _line_containing(sidecar: SidecarProcess, text: str) -> dict[str, Any]:
    """Read the process's stdout until a JSON line with `text` in its msg."""
    assert sidecar.proc is not None and sidecar.proc.stdout is not None
    stdout = sidecar.proc.stdout
    while True:
        raw = await asyncio.to_thread(stdout.readline)
        assert raw, "the sidecar exited without the line"
        if raw.startswith(b"{") and text in (line := json.loads(raw)).get("msg", ""):
            return dict(line)


async def test_a_started_sidecar_logs_that_redis_and_the_upstream_answered(
    stub_server: TestServer, shared_redis: RedisProcess, redis_client: Redis,
) -> None:
    sidecar = SidecarProcess({"UPSTREAM_URL": str(stub_server.make_url("")).rstrip("/"),
                              "REDIS_URL": shared_redis.url})
    sidecar.launch()
    try:
        line = await within(_line_containing(sidecar, "start-up check"), "start-up check")
    finally:
        sidecar.stop()
    assert line["level"] == "info" and line["logger"] == "sidecar"
    assert line["redis"] == "ok" and line["upstream"] == "ok"
    assert line["cache_backend"] == "redis"


async def test_nothing_answering_is_one_warning_within_its_bounds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings.from_env({
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "UPSTREAM_URL": f"http://127.0.0.1:{free_port()}", "CACHE_KEY_SECRET": "x"})
    store = build_store(settings)
    start = time.monotonic()
    try:
        with caplog.at_level(logging.INFO, logger="sidecar"):
            await check(settings, store, upstream_wait=0.6)
    finally:
        await store.close()
    assert time.monotonic() - start < 5, "bounded: the Redis budget, the upstream wait"
    (record,) = [r for r in caplog.records if "start-up check" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert record.__dict__["upstream"] == "refused"
    assert record.__dict__["redis"].startswith("error: ")
    assert record.__dict__["upstream_after_s"] >= 0.25, "retried while the app may start"


async def test_a_refused_upstream_is_a_rate_limited_warning_without_the_path(
    make_stack: StackFactory, redis_client: Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    stack = await make_stack({"UPSTREAM_URL": f"http://127.0.0.1:{port}",
                              "SIDECAR_WARN_INTERVAL_S": "60"})
    with caplog.at_level(logging.WARNING, logger="sidecar.upstream"):
        for path in ("/api/v1/patients/987654", "/api/v1/other/987654", "/x"):
            assert (await stack.proxy.get(path)).status == 502
    (record,) = [r for r in caplog.records if r.name == "sidecar.upstream"]
    message = record.getMessage()
    assert f"http://127.0.0.1:{port}" in message and "refused" in message
    assert "987654" not in message
