"""The near tier never serves what Redis no longer holds: two real sidecar processes, one
real redis-server, the stub upstream.

A write through replica A is served fresh by replica B within a bounded lag; a purge on A
empties B's tier; when B's invalidation channel is cut, B stops using its tier until it is
subscribed again.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import Client
from tests.redis_process import RedisProcess
from tests.sidecar_process import SidecarProcess
from tests.waiting import until

PATIENT = "/api/v1/patients/42"
JSON = {"Content-Type": "application/json"}


async def _state(session: aiohttp.ClientSession, sidecar: SidecarProcess) -> str:
    async with session.get(sidecar.admin + "/readyz") as r:
        return str((await r.json())["near"])


async def _hgets(redis: RedisProcess) -> int:
    stats = redis.info("commandstats")
    line = stats.get("cmdstat_hget", "calls=0")
    return int(line.split("calls=")[1].split(",")[0])


@pytest.fixture
async def pair(
    stub_server: TestServer, own_redis: RedisProcess
) -> AsyncIterator[tuple[SidecarProcess, SidecarProcess]]:
    upstream = str(stub_server.make_url("")).rstrip("/")
    sidecars = [SidecarProcess({"UPSTREAM_URL": upstream, "REDIS_URL": own_redis.url,
                                "SIDECAR_ACCESS_LOG_SAMPLE": "0"}) for _ in range(2)]
    for sidecar in sidecars:
        sidecar.launch()
    try:
        async with aiohttp.ClientSession() as session:
            for sidecar in sidecars:
                await sidecar.ready()

                async def in_sync(s: SidecarProcess = sidecar) -> bool:
                    return await _state(session, s) == "in-sync"

                await until(in_sync, f"near tier of {sidecar.admin} in sync")
        yield sidecars[0], sidecars[1]
    finally:
        for sidecar in sidecars:
            sidecar.stop()


async def test_hits_come_from_the_near_tier_without_a_redis_round_trip(
    pair: tuple[SidecarProcess, SidecarProcess], own_redis: RedisProcess
) -> None:
    _, b = pair
    client = Client(b.base)
    try:
        assert (await client.get(PATIENT)).x_cache == "MISS"
        before = await _hgets(own_redis)
        for _ in range(20):
            assert (await client.get(PATIENT)).x_cache == "HIT"
        assert await _hgets(own_redis) - before <= 1  # the first may still read Redis
    finally:
        await client.close()


async def test_a_write_through_one_replica_is_seen_by_the_other(
    pair: tuple[SidecarProcess, SidecarProcess]
) -> None:
    a, b = pair
    via_a, via_b = Client(a.base), Client(b.base)
    lags: list[float] = []
    try:
        for version in range(2, 32):
            await via_b.get(PATIENT)
            assert (await via_b.get(PATIENT)).x_cache == "HIT"  # held in B's near tier
            written = await via_a.request("PATCH", PATIENT, headers=JSON,
                                          data=f'{{"gender": "v{version}"}}')
            assert written.status == 200
            done = time.monotonic()
            while True:
                reply = await via_b.get(PATIENT)
                if reply.json()["gender"] == f"v{version}":
                    lags.append(time.monotonic() - done)
                    break
                assert time.monotonic() - done < 2.0, "B kept serving the old record"
    finally:
        await via_a.close()
        await via_b.close()
    lags.sort()
    p50 = statistics.median(lags) * 1000
    p99 = lags[int(len(lags) * 0.99) - 1] * 1000
    print(f"\ncross-replica invalidation lag over {len(lags)} writes: "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {lags[-1] * 1000:.2f} ms")


async def test_a_purge_on_one_replica_empties_the_others_near_tier(
    pair: tuple[SidecarProcess, SidecarProcess], own_redis: RedisProcess
) -> None:
    a, b = pair
    via_b = Client(b.base)
    try:
        await via_b.get(PATIENT)
        assert (await via_b.get(PATIENT)).x_cache == "HIT"
        async with aiohttp.ClientSession() as session, session.delete(
                a.admin + "/cache/identity:patient:42") as r:
            assert r.status == 200

        async def missed() -> bool:
            return (await via_b.get(PATIENT)).x_cache == "MISS"

        await until(missed, "B's near copy dropped after the purge on A", seconds=5)
    finally:
        await via_b.close()


async def test_a_cut_channel_stops_the_near_tier_until_it_is_back(
    pair: tuple[SidecarProcess, SidecarProcess], own_redis: RedisProcess
) -> None:
    a, b = pair
    via_a, via_b = Client(a.base), Client(b.base)
    try:
        async with aiohttp.ClientSession() as session:
            await via_b.get(PATIENT)
            assert (await via_b.get(PATIENT)).x_cache == "HIT"
            own_redis.command("CLIENT", "KILL", "TYPE", "pubsub")  # both replicas' channels

            async def out_of_sync() -> bool:
                return await _state(session, b) == "out-of-sync"

            await until(out_of_sync, "B noticed its channel was cut", seconds=5)
            # A's announcement cannot reach B now; B must not answer from its tier.
            written = await via_a.request("PATCH", PATIENT, headers=JSON,
                                          data='{"gender": "while-cut"}')
            assert written.status == 200
            assert (await via_b.get(PATIENT)).json()["gender"] == "while-cut"
            before = await _hgets(own_redis)
            assert (await via_b.get(PATIENT)).x_cache == "HIT"
            assert await _hgets(own_redis) > before  # from Redis, not from the tier

            async def in_sync() -> bool:
                return await _state(session, b) == "in-sync"

            await until(in_sync, "B subscribed again", seconds=15)
            assert (await via_b.get(PATIENT)).json()["gender"] == "while-cut"
    finally:
        await via_a.close()
        await via_b.close()
