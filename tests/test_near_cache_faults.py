"""Two replicas on one real redis-server: a write through one is never hidden from the
other by its near tier, even when Redis data calls fail or the announcement is lost
(found by attack on the per-tier breaker idea: another replica's announcements travel
through the same Redis, so while this one's breaker is open its near tier stands down)."""

from __future__ import annotations

from functools import partial

from tests.conftest import Stack, StackFactory
from tests.redis_process import RedisProcess
from tests.waiting import until

PATIENT = "/api/v1/patients/42"
JSON = {"Content-Type": "application/json"}


async def _in_sync(stack: Stack) -> bool:
    return bool((await stack.admin.get("/readyz", token=None)).json()["near"] == "in-sync")


async def _pair(make_stack: StackFactory, redis: RedisProcess, env: dict[str, str]
                ) -> tuple[Stack, Stack]:
    a = await make_stack(env, redis_url=redis.url)
    b = await make_stack(env, redis_url=redis.url)
    for s in (a, b):
        await until(partial(_in_sync, s), "near tier in sync")
    assert (await b.proxy.get(PATIENT)).x_cache == "MISS"
    assert (await b.proxy.get(PATIENT)).x_cache == "HIT"  # from B's near tier from now on
    return a, b


async def test_a_write_is_not_hidden_by_a_near_tier_while_redis_data_calls_fail(
    make_stack: StackFactory, own_redis: RedisProcess
) -> None:
    a, b = await _pair(make_stack, own_redis, {"CACHE_BREAKER_FAILURES": "3"})
    # Data commands refused, the subscription untouched: both breakers open.
    assert own_redis.command("ACL", "SETUSER", "default", "-@all", "+ping", "+subscribe",
                             "+publish") == b"+OK"
    for s in (a, b):
        for n in range(5):
            assert (await s.proxy.get(f"/api/v1/patients/{100 + n}")).status == 200
    put = await a.proxy.request("PUT", PATIENT, data=b'{"gender": "other"}', headers=JSON)
    assert put.status == 200
    reply = await b.proxy.get(PATIENT)
    assert reply.status == 200 and reply.json()["gender"] == "other"


async def test_an_announcement_that_did_not_go_out_is_sent_again(
    make_stack: StackFactory, own_redis: RedisProcess
) -> None:
    a, b = await _pair(make_stack, own_redis, {})
    assert own_redis.command("ACL", "SETUSER", "default", "-publish") == b"+OK"
    put = await a.proxy.request("PUT", PATIENT, data=b'{"gender": "other"}', headers=JSON)
    assert put.status == 200  # the delete went through, the announcement did not
    assert own_redis.command("ACL", "SETUSER", "default", "+@all") == b"+OK"

    async def b_sees_the_write() -> bool:
        return bool((await b.proxy.get(PATIENT)).json()["gender"] == "other")

    await until(b_sees_the_write, "the write reached B's near tier")
