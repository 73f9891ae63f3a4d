"""Fault scenarios that need load or time: OOM, client aborts against a slow Redis (the
CVE-2023-28858 class), and a soak of mixed reads and writes. Each asserts what users see.
Figures are printed (pytest -s) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from redis.asyncio import Redis

from sidecar.entry import Entry
from tests.conftest import Client, StackFactory
from tests.delay_proxy import DelayProxy
from tests.redis_process import RedisProcess

pytestmark = pytest.mark.faults
TOKENS = [f"Bearer clinician-{n}" for n in range(4)]


@pytest.fixture
def oom_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path, "--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    proc.start()
    yield proc
    proc.stop()


async def test_redis_out_of_memory_serves_from_upstream(
    make_stack: StackFactory, oom_redis: RedisProcess
) -> None:
    stack = await make_stack({"CACHE_BREAKER_FAILURES": "1000"}, redis_url=oom_redis.url)
    padded = {"X-Stub-Body-Bytes": str(200 * 1024)}
    for n in range(1, 40):
        start = time.monotonic()
        reply = await stack.proxy.get(f"/api/v1/patients/{n}", headers=padded)
        assert time.monotonic() - start < 2.5  # OOM is an immediate error reply: no stall
        assert reply.status == 200 and reply.json()["id"] == str(n)
    metrics = (await stack.admin.get("/metrics", token=None)).body.decode()
    assert 'cache_errors_total{operation="set",reason="error"}' in metrics
    assert oom_redis.command("CONFIG", "SET", "maxmemory", "0") == b"+OK"  # memory freed
    assert (await stack.proxy.get("/api/v1/patients/1", headers=padded)).x_cache == "MISS"
    assert (await stack.proxy.get("/api/v1/patients/1", headers=padded)).x_cache == "HIT"


@pytest.mark.timeout(600)
async def test_client_aborts_against_a_slow_redis_never_mix_up_bodies(
    make_stack: StackFactory, own_redis: RedisProcess
) -> None:
    """Over many requests, with aborts and Redis replies straddling the timeout, no caller
    ever receives another id's or another caller's body.
    """
    total = int(os.environ.get("ABORT_REQUESTS", "10000"))
    relay = DelayProxy(own_redis.port, max_delay=0.06)
    await relay.start()
    try:
        stack = await make_stack({"CACHE_BREAKER_FAILURES": "1000000", "REDIS_TIMEOUT_MS": "100",
                                  "REDIS_CONNECT_TIMEOUT_MS": "50", "CACHE_TTL_PATIENT": "2"},
                                 redis_url=f"redis://127.0.0.1:{relay.port}/0")
        rng = random.Random(42)
        callers = {t: None for t in TOKENS}
        seen: Counter[str] = Counter()
        wrong: list[str] = []
        clients = [Client(stack.proxy.base) for _ in range(8)]

        async def one(i: int) -> None:
            pid, token = rng.randint(1, 30), rng.choice(TOKENS)
            abort = rng.random() < 0.3
            call = clients[i % len(clients)].get(f"/api/v1/patients/{pid}", token=token)
            if abort:
                try:
                    await asyncio.wait_for(call, rng.uniform(0.0005, 0.005))
                    seen["completed-before-abort"] += 1
                except TimeoutError:
                    seen["aborted"] += 1
                return
            reply = await call
            seen[f"{reply.status} {reply.x_cache}"] += 1
            body = reply.json()
            caller = body["meta"]["caller"]
            if callers[token] is None:
                callers[token] = caller
            if body["id"] != str(pid) or caller != callers[token]:
                wrong.append(f"asked {pid}, got {body['id']}")

        gate = asyncio.Semaphore(64)

        async def gated(i: int) -> None:
            async with gate:
                await one(i)

        await asyncio.gather(*[gated(i) for i in range(total)])
        for client in clients:
            await client.close()
        metrics = (await stack.admin.get("/metrics", token=None)).body.decode()
        timeouts = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                       if line.startswith("cache_errors_total") and "timeout" in line)
        print(f"\nabort storm: {total} requests, {dict(seen)}, redis timeouts {timeouts:.0f},"
              f" wrong bodies {len(wrong)}")
        assert wrong == []
        assert seen["aborted"] > total * 0.2
        assert timeouts > 0  # cancellations inside redis-py really happened
        assert seen["200 HIT"] > 0  # and the cache was in use between them
        assert sum(v for k, v in seen.items() if k.startswith("5")) == 0
    finally:
        await relay.close()


@pytest.mark.timeout(float(os.environ.get("SOAK_SECONDS", "60")) + 120)
async def test_soak_every_cached_entry_matches_the_upstream(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    """Mixed reads and writes from several clients; afterwards nothing stale is cached."""
    seconds = float(os.environ.get("SOAK_SECONDS", "60"))
    stack = await make_stack()
    rng = random.Random(1)
    ids = list(range(1, 21))
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    async def worker(n: int) -> None:
        client = Client(stack.proxy.base)
        try:
            while time.monotonic() < deadline:
                pid, token = rng.choice(ids), rng.choice(TOKENS)
                path = f"/api/v1/patients/{pid}"
                roll = rng.random()
                if roll < 0.1:
                    reply = await client.request(
                        rng.choice(["PUT", "PATCH"]), path, token=token,
                        data=json.dumps({"gender": rng.choice(["female", "male", "other"]),
                                         "active": rng.random() < 0.5}).encode(),
                        headers={"Content-Type": "application/json"})
                    counts[f"write {reply.status}"] += 1
                else:
                    enc = {"Accept-Encoding": "gzip"} if roll < 0.4 else {}
                    reply = await client.get(path, token=token, headers=enc)
                    counts[f"read {reply.status} {reply.x_cache}"] += 1
                assert reply.status < 500, reply.body
        finally:
            await client.close()

    await asyncio.gather(*[worker(n) for n in range(6)])
    await stack.rt.flights.idle()
    fingerprints = {stack.rt.hasher.fingerprint(CIMultiDictProxy(CIMultiDict(
        {"Authorization": t}))): t for t in TOKENS}
    checked = 0
    direct = Client(stack.stub_url)
    try:
        for raw_key in await redis_client.keys("identity:patient:*"):
            assert isinstance(raw_key, bytes)
            key = raw_key.decode()
            pid = key.rsplit(":", 1)[1]
            stored = await redis_client.hgetall(key)
            for raw_field, blob in stored.items():
                assert isinstance(raw_field, bytes) and isinstance(blob, bytes)
                field = raw_field.decode()
                entry = Entry.decode(stack.rt.codec.open(key, field, blob))
                if entry.remaining(stack.rt.clock()) <= 0:
                    continue
                token = fingerprints[field.split("|")[0]]
                body = entry.body
                if entry.header("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                now = await direct.get(f"/api/v1/patients/{pid}", token=token)
                assert json.loads(body) == now.json(), f"stale entry for {key!r}"
                checked += 1
    finally:
        await direct.close()
    print(f"\nsoak: {seconds:.0f}s, {sum(counts.values())} requests {dict(counts)}, "
          f"{checked} cached variants checked against the upstream, 0 stale")
    assert checked > 0
