"""Shared fixtures: a real redis-server, the stub upstream and the sidecar on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy
from redis.asyncio import Redis
from yarl import URL

from sidecar.app import build_apps
from sidecar.fast_hit import FastHits
from sidecar.listener import BoundedRunner
from sidecar.proxy import direct
from sidecar.rules import load_rules, parse_rules
from sidecar.runtime import RUNTIME, Runtime
from sidecar.settings import Settings
from sidecar.telemetry import Telemetry
from tests.redis_process import RedisProcess
from upstream_stub.app import STATE, build_app
from upstream_stub.settings import StubSettings

ROOT = Path(__file__).resolve().parent.parent
ROUTES = ROOT / "config" / "routes.yaml"
TOKEN_A = "Bearer token-alice"
TOKEN_B = "Bearer token-bob"
# Test stacks run against real processes on a shared, possibly busy machine: a healthy Redis
# must never look slow and a hiccup must never open the breaker, or the cache silently drops
# out and a test fails for the wrong reason. The production defaults (100 ms, 5 failures)
# are set explicitly only by the tests that are about Redis timeouts and the breaker
# (`REDIS_FAULT_BUDGETS`).
GENEROUS_BUDGETS = {"REDIS_TIMEOUT_MS": "5000", "REDIS_CONNECT_TIMEOUT_MS": "5000",
                   "CACHE_BREAKER_FAILURES": "1000"}
REDIS_FAULT_BUDGETS = {"REDIS_TIMEOUT_MS": "100", "REDIS_CONNECT_TIMEOUT_MS": "100",
                       "CACHE_BREAKER_FAILURES": "5"}


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path_factory.mktemp("redis"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server for this test alone, so it may be killed or frozen."""
    proc = RedisProcess(tmp_path)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
async def redis_client(shared_redis: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(shared_redis.url)
    await client.flushall()
    yield client
    await client.aclose()


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def x_cache(self) -> str | None:
        return self.headers.get("X-Cache")

    def json(self) -> Any:
        import json
        return json.loads(self.body)


class Client:
    """A plain HTTP client: no automatic Accept-Encoding, no decompression."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(
            auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent"),
            cookie_jar=aiohttp.DummyCookieJar())

    async def request(self, method: str, path: str, *, token: str | None = TOKEN_A,
                      headers: dict[str, str] | None = None, data: Any = None) -> Reply:
        h = dict(headers or {})
        if token is not None:
            h.setdefault("Authorization", token)
        url = URL(self.base + path, encoded=True)  # send the path exactly as written
        async with self.session.request(method, url, headers=h, data=data,
                                        allow_redirects=False) as r:
            return Reply(r.status, r.headers, await r.read())

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def close(self) -> None:
        await self.session.close()


@dataclass
class Stack:
    proxy: Client
    admin: Client
    rt: Runtime
    stub: web.Application
    stub_url: str

    def upstream_hits(self, path: str, method: str = "GET") -> int:
        return self.stub[STATE].hits[f"{method} {path}"]


StackFactory = Callable[..., Awaitable[Stack]]


class ProxyTestServer(TestServer):
    """The proxy app served as `python -m sidecar` serves it: the bounded runner and the
    port's one-route handler (`proxy.direct`), not aiohttp's router."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        rt = self.app[RUNTIME]
        return BoundedRunner(self.app, listener="proxy", direct=lambda routed: direct(rt, routed),
                             fast=FastHits(rt).answer,
                             keepalive_timeout=rt.settings.keepalive_timeout,
                             header_timeout=rt.settings.header_timeout,
                             shutdown_timeout=rt.settings.shutdown_timeout, **kwargs)


@pytest.fixture
async def stub_server() -> AsyncIterator[TestServer]:
    server = TestServer(build_app(StubSettings()), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def make_stack(
    stub_server: TestServer, shared_redis: RedisProcess,
) -> AsyncIterator[StackFactory]:
    """Build a sidecar in front of the stub; env and rules are per call."""
    servers: list[TestServer] = []
    clients: list[Client] = []

    async def build(env: dict[str, str] | None = None, rules_yaml: str | None = None,
                    redis_url: str | None = None, telemetry: Telemetry | None = None) -> Stack:
        values = {"UPSTREAM_URL": str(stub_server.make_url("")).rstrip("/"),
                  "REDIS_URL": redis_url or shared_redis.url,
                  "CACHE_KEY_SECRET": "test-secret", "SIDECAR_WARN_INTERVAL_S": "0.001",
                  "SIDECAR_ADMIN_HOST": "127.0.0.1", **GENEROUS_BUDGETS, **(env or {})}
        settings = Settings.from_env(values)
        rules = (parse_rules(rules_yaml.encode(), "test.yaml", values) if rules_yaml
                 else load_rules(ROUTES, values))
        proxy_app, admin_app = build_apps(settings, rules, telemetry=telemetry)
        pair = []
        for app in (proxy_app, admin_app):
            server = (ProxyTestServer if app is proxy_app else TestServer)(app, host="127.0.0.1")
            await server.start_server()
            servers.append(server)
            client = Client(str(server.make_url("")).rstrip("/"))
            clients.append(client)
            pair.append(client)
        return Stack(pair[0], pair[1], proxy_app[RUNTIME], stub_server.app,
                     str(stub_server.make_url("")).rstrip("/"))

    yield build
    for client in clients:
        await client.close()
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def stack(make_stack: StackFactory, redis_client: Redis) -> Stack:
    return await make_stack()
