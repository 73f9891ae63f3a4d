"""Writes through odd spellings, odd methods and a dead upstream erase exactly what changed.

Each case is the attack that once left a deleted or changed patient cached for its whole
TTL, or erased an entry that stale-if-error should have served.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from tests.conftest import REDIS_FAULT_BUDGETS, Stack, StackFactory
from tests.redis_process import RedisProcess

PATIENT = "/api/v1/patients/321"
KEY = "identity:patient:321"
DASHBOARD = "/api/v1/statistics/dashboard"
JSON = {"Content-Type": "application/json"}


async def _prime(stack: Stack, *paths: str) -> None:
    for path in paths:
        await stack.proxy.get(path)
        assert (await stack.proxy.get(path)).x_cache == "HIT"


@pytest.mark.parametrize(("method", "spelling"), [
    ("PUT", "0" * 70 + "321"),
    ("PATCH", "0" * 5000 + "321"),
    ("PATCH", "0" * 70 + "321." + "0" * 70),
    ("PUT", "%30" * 40 + "321"),
])
async def test_long_id_spellings_invalidate_the_entity(
    stack: Stack, redis_client: Redis, method: str, spelling: str
) -> None:
    await _prime(stack, PATIENT)
    reply = await stack.proxy.request(method, f"/api/v1/patients/{spelling}",
                                      data=b'{"gender": "other"}', headers=JSON)
    assert reply.status == 200  # the service applied it to patient 321
    assert await redis_client.exists(KEY) == 0
    after = await stack.proxy.get(PATIENT)
    assert after.x_cache == "MISS" and after.json()["gender"] == "other"


async def test_delete_through_a_long_spelling_is_never_answered_from_cache(
    stack: Stack, redis_client: Redis
) -> None:
    await _prime(stack, PATIENT)
    gone = await stack.proxy.request("DELETE", "/api/v1/patients/" + "0" * 70 + "321")
    assert gone.status == 204
    after = await stack.proxy.get(PATIENT)
    assert after.status == 404 and after.x_cache == "MISS"


@pytest.mark.parametrize("spelling", ["/api/v1/patient%73", "/api/v1/%70atients"])
async def test_encoded_collection_writes_invalidate_the_dashboard(
    stack: Stack, redis_client: Redis, spelling: str
) -> None:
    await _prime(stack, DASHBOARD)
    created = await stack.proxy.request("POST", spelling, data=b"{}", headers=JSON)
    assert created.status == 201
    assert await redis_client.exists("identity:stats:dashboard") == 0


@pytest.fixture
async def any_method_upstream() -> AsyncIterator[TestServer]:
    """A service that reads patients and accepts extension methods on them."""
    async def read(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "seen": request.method})

    app = web.Application()
    app.router.add_route("*", "/api/v1/patients/{id}", read)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.mark.parametrize("method", ["M-SEARCH", "PURGE", "LINK", "REPORT"])
async def test_any_unsafe_method_invalidates(
    make_stack: StackFactory, redis_client: Redis, any_method_upstream: TestServer,
    method: str,
) -> None:
    stack = await make_stack({"UPSTREAM_URL": str(any_method_upstream.make_url("")).rstrip("/")})
    await _prime(stack, PATIENT)
    reply = await stack.proxy.request(method, PATIENT)
    assert reply.status == 200 and reply.json()["seen"] == method
    assert await redis_client.exists(KEY) == 0


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE"])
async def test_safe_methods_leave_the_entry(
    make_stack: StackFactory, redis_client: Redis, any_method_upstream: TestServer,
    method: str,
) -> None:
    stack = await make_stack({"UPSTREAM_URL": str(any_method_upstream.make_url("")).rstrip("/")})
    await _prime(stack, PATIENT)
    await stack.proxy.request(method, PATIENT)
    assert await redis_client.exists(KEY) == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here now: connections are refused


async def test_a_write_that_never_reached_the_service_erases_nothing(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    live = await make_stack()
    await _prime(live, PATIENT)
    dead = await make_stack({"UPSTREAM_URL": f"http://127.0.0.1:{_closed_port()}"})
    reply = await dead.proxy.request("PUT", PATIENT, token=None, data=b"{}", headers=JSON)
    assert reply.status == 502
    assert await redis_client.exists(KEY) == 1
    # Expired meanwhile: stale-if-error still has the copy to serve.
    dead.rt.set_clock(lambda: __import__("time").time() + 700)
    stale = await dead.proxy.get(PATIENT)
    assert stale.status == 200 and stale.x_cache == "STALE"


async def test_a_write_whose_answer_was_lost_still_invalidates(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    """The request reached the service, which hung up before answering: it may have
    committed, so the entry goes."""
    arrived = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        live = await make_stack()
        await _prime(live, PATIENT)
        cut = await make_stack({"UPSTREAM_URL": f"http://127.0.0.1:{port}"})
        reply = await cut.proxy.request("DELETE", PATIENT)
        assert arrived.is_set() and reply.status == 502
        assert await redis_client.exists(KEY) == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_write_to_an_unreadable_id_that_succeeds_erases_the_whole_prefix(
    make_stack: StackFactory, redis_client: Redis, any_method_upstream: TestServer,
) -> None:
    """A service that accepted an id spelling the sidecar cannot read: when in doubt,
    erase every patient, and count it."""
    stack = await make_stack({"UPSTREAM_URL": str(any_method_upstream.make_url("")).rstrip("/")})
    await _prime(stack, PATIENT, "/api/v1/patients/7")
    reply = await stack.proxy.request("PUT", "/api/v1/patients/%D9%A4%D9%A2", data=b"{}")
    assert reply.status == 200
    assert await redis_client.exists(KEY, "identity:patient:7") == 0
    metrics = (await stack.admin.get("/metrics", token=None)).body.decode()
    assert 'cache_conservative_erases_total{key_prefix="identity:patient"} 1.0' in metrics


async def test_write_to_an_unreadable_id_that_is_refused_erases_nothing(
    stack: Stack, redis_client: Redis
) -> None:
    await _prime(stack, PATIENT)
    reply = await stack.proxy.request("PUT", "/api/v1/patients/abc", data=json.dumps({}))
    assert reply.status == 422
    assert await redis_client.exists(KEY) == 1


async def test_more_pending_invalidations_than_tracked_bypass_the_whole_prefix(
    make_stack: StackFactory, own_redis: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis is down and writes pile up past the pending limit: the overflow must not let
    a changed record be served when Redis comes back."""
    monkeypatch.setattr("sidecar.invalidation.MAX_PENDING", 2)
    stack = await make_stack({**REDIS_FAULT_BUDGETS, "CACHE_BREAKER_FAILURES": "1000"},
                             redis_url=own_redis.url)
    await _prime(stack, "/api/v1/patients/7")
    frozen = own_redis.freeze(4)  # Redis keeps its data but answers nobody for 4 s
    try:
        for pid in (1001, 1002, 1003, 7):
            reply = await stack.proxy.request("PATCH", f"/api/v1/patients/{pid}", headers=JSON,
                                              data=b'{"gender": "after"}')
            assert reply.status == 200
        await asyncio.to_thread(frozen.recv, 64)  # the DEBUG SLEEP reply: Redis is back
    finally:
        frozen.close()
    for _ in range(5):
        reply = await stack.proxy.get("/api/v1/patients/7")
        assert reply.json()["gender"] == "after", reply.headers["Cache-Status"]
