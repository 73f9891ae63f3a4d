"""Writes and purges across replicas (two sidecars on one real redis-server): a fill that
began before another replica's write never keeps the old record, a purge never leaves it in
the purging replica's near tier, and a subscription that dies silently is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.conftest import Stack, StackFactory
from tests.redis_process import RedisProcess
from tests.waiting import until, within
from upstream_stub.app import STATE

PATIENT = "/api/v1/patients/42"
JSON = {"Content-Type": "application/json"}


async def _version(stack: Stack) -> int:
    return int((await stack.proxy.get(PATIENT)).json()["meta"]["versionId"])


async def test_a_fill_overtaken_by_another_replicas_write_does_not_keep_the_old_record(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    a, b = await make_stack(), await make_stack()
    for s in (a, b):
        await until(_in_sync(s), "subscribed")
    # B's fill reads version 1 upstream, then takes a second to answer.
    slow = asyncio.ensure_future(b.proxy.get(PATIENT, headers={"X-Stub-Delay-Ms": "1000"}))
    await within(b.stub[STATE].wait_for(f"GET {PATIENT}"), "B's fill at the upstream")
    written = await a.proxy.request("PATCH", PATIENT, headers=JSON, data=b'{"gender": "x"}')
    assert written.status == 200
    assert (await slow).json()["meta"]["versionId"] == 1  # began before the write: fine

    async def both_fresh() -> bool:
        return await _version(a) == 2 and await _version(b) == 2

    await until(both_fresh, "both replicas serve the written record", seconds=5)
    for s in (a, b):
        assert await _version(s) == 2
    assert all(b'"versionId":1' not in v
               for v in (await redis_client.hgetall("identity:patient:42")).values())


def _in_sync(stack: Stack):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return stack.rt.near is not None and stack.rt.near.in_sync
    return check


async def test_reads_during_a_slow_purge_do_not_refill_the_near_tier_with_the_old_record(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack()
    await until(_in_sync(stack), "subscribed")
    await stack.proxy.get(PATIENT)
    assert (await stack.proxy.get(PATIENT)).x_cache == "HIT"
    real = stack.rt.store.delete_prefix

    async def slow_scan(prefix: str) -> int:
        # A read lands while the SCAN is still going: the old entry is still in Redis, but
        # it was stored before the purge began, so it is not served (nor put in the near
        # tier); the read refills from the service.
        stack.rt.near.flush()  # type: ignore[union-attr]
        assert (await stack.proxy.get(PATIENT)).x_cache == "MISS"
        return await real(prefix)

    stack.rt.store.delete_prefix = slow_scan  # type: ignore[method-assign]
    purged = await stack.admin.request("DELETE", "/cache?prefix=identity:patient&confirm=yes",
                                       token=None)
    assert purged.status == 200
    assert (await stack.proxy.get(PATIENT)).x_cache == "MISS"


class FreezableRelay:
    """A TCP relay to Redis that can stop passing bytes on subscriber connections only,
    keeping their sockets open: a pub/sub link dead without a FIN (NAT, conntrack)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        subscriber = [False]
        await asyncio.gather(self._pipe(reader, up_writer, subscriber, True),
                             self._pipe(up_reader, writer, subscriber, False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    subscriber: list[bool], upward: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if upward and b"SUBSCRIBE" in data.upper():
                    subscriber[0] = True
                if subscriber[0] and self.frozen.is_set():
                    continue  # swallowed: the peer never hears of it
                writer.write(data)
                await writer.drain()


@pytest.fixture
async def relay(own_redis: RedisProcess) -> AsyncIterator[FreezableRelay]:
    proxy = FreezableRelay(own_redis.port)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_a_silently_dead_subscription_takes_the_near_tier_out_of_use(
    make_stack: StackFactory, own_redis: RedisProcess, relay: FreezableRelay
) -> None:
    a = await make_stack(redis_url=own_redis.url)
    b = await make_stack(redis_url=f"redis://127.0.0.1:{relay.port}/0")
    for s in (a, b):
        await until(_in_sync(s), "subscribed")
    assert await _version(b) == 1
    assert (await b.proxy.get(PATIENT)).x_cache == "HIT"
    relay.frozen.set()
    written = await a.proxy.request("PATCH", PATIENT, headers=JSON, data=b'{"gender": "y"}')
    assert written.status == 200
    # B cannot hear of it; its heartbeat must notice within a few seconds.
    took = await until(lambda: _served_fresh(b), "B stops serving the old record", seconds=10)
    assert took < 6
    assert b.rt.near is not None and not b.rt.near.in_sync


async def _served_fresh(stack: Stack) -> bool:
    return await _version(stack) == 2
