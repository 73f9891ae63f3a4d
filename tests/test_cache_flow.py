"""Cache-aside end to end: real redis-server, real stub upstream, the real app."""

from __future__ import annotations

import asyncio
import gzip

from redis.asyncio import Redis

from tests.conftest import TOKEN_A, TOKEN_B, Stack, StackFactory
from tests.waiting import within

PATIENT = "/api/v1/patients/42"


async def test_miss_then_hit_under_the_seed_key_with_the_rule_ttl(
    stack: Stack, redis_client: Redis
) -> None:
    first = await stack.proxy.get(PATIENT)
    second = await stack.proxy.get(PATIENT)
    assert (first.status, first.x_cache) == (200, "MISS")
    assert (second.status, second.x_cache) == (200, "HIT")
    assert second.body == first.body and second.json()["id"] == "42"
    assert stack.upstream_hits(PATIENT) == 1
    assert await redis_client.keys("*") == [b"identity:patient:42"]
    assert await redis_client.type("identity:patient:42") == b"hash"
    ttl = await redis_client.ttl("identity:patient:42")
    assert 600 < ttl <= 600 + 900  # TTL plus the rule's largest stale window
    assert "stored" in first.headers["Cache-Status"]
    assert second.headers["Cache-Status"].startswith("sidecar; hit; ttl=")
    assert second.headers["Age"] == "0"
    assert second.headers["ETag"] == first.headers["ETag"]


async def test_a_hit_is_one_redis_round_trip(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack({"CACHE_NEAR_MAX_BYTES": "0"})  # Redis only: no near tier
    await stack.proxy.get(PATIENT)
    await redis_client.config_resetstat()
    assert (await stack.proxy.get(PATIENT)).x_cache == "HIT"
    stats = await redis_client.info("commandstats")
    calls = {name: v["calls"] for name, v in stats.items()
             if not name.startswith(("cmdstat_config", "cmdstat_info"))}
    assert calls == {"cmdstat_hget": 1}


async def test_each_route_uses_its_own_key(stack: Stack, redis_client: Redis) -> None:
    for path in ("/api/v1/professionals/123", "/api/v1/statistics/dashboard"):
        assert (await stack.proxy.get(path)).x_cache == "MISS"
        assert (await stack.proxy.get(path)).x_cache == "HIT"
    keys = sorted(await redis_client.keys("*"))
    assert keys == [b"identity:professional:123", b"identity:stats:dashboard"]
    assert await redis_client.ttl("identity:stats:dashboard") <= 300 + 900


async def test_env_overrides_the_yaml_ttl(make_stack: StackFactory, redis_client: Redis) -> None:
    stack = await make_stack({"CACHE_TTL_PATIENT": "30"})
    assert stack.rt.rules.rules[0].ttl == 30
    await stack.proxy.get(PATIENT)
    assert 30 < await redis_client.ttl("identity:patient:42") <= 30 + 900
    hit = await stack.proxy.get(PATIENT)
    assert int(hit.headers["Cache-Status"].rsplit("ttl=", 1)[1]) <= 30


async def test_in_flight_requests_finish_under_the_rules_they_started_with(
    stack: Stack, redis_client: Redis
) -> None:
    from dataclasses import replace

    from upstream_stub.app import STATE
    slow = asyncio.ensure_future(stack.proxy.get(PATIENT, headers={"X-Stub-Delay-Ms": "200"}))
    await within(stack.stub[STATE].wait_for(f"GET {PATIENT}"), "the GET reaching the upstream")
    old = stack.rt.rules
    stack.rt.rules = replace(old, rules=tuple(replace(r, ttl=5, stale=replace(
        r.stale, while_revalidate=0, if_error=0, max=0)) for r in old.rules))
    assert (await slow).x_cache == "MISS"
    assert await redis_client.ttl("identity:patient:42") > 600  # stored under the old rule
    await stack.proxy.get("/api/v1/patients/43")
    assert 0 < await redis_client.ttl("identity:patient:43") <= 5  # new requests: new rules


async def test_age_counts_time_in_cache(stack: Stack) -> None:
    await stack.proxy.get(PATIENT)
    clock = stack.rt.clock
    stack.rt.set_clock(lambda: clock() + 42)
    hit = await stack.proxy.get(PATIENT)
    assert hit.x_cache == "HIT" and hit.headers["Age"] == "42"


async def test_expired_entry_is_a_miss(make_stack: StackFactory, redis_client: Redis) -> None:
    stack = await make_stack({"CACHE_TTL_PATIENT": "10"})
    await stack.proxy.get(PATIENT)
    clock = stack.rt.clock
    stack.rt.set_clock(lambda: clock() + 10 + 900 + 1)  # past TTL and every stale window
    assert (await stack.proxy.get(PATIENT)).x_cache == "MISS"
    assert stack.upstream_hits(PATIENT) == 2


async def test_head_is_answered_from_the_get_entry(stack: Stack) -> None:
    miss = await stack.proxy.request("HEAD", PATIENT)
    assert miss.x_cache == "MISS" and miss.body == b""
    get = await stack.proxy.get(PATIENT)
    assert get.x_cache == "HIT"
    head = await stack.proxy.request("HEAD", PATIENT)
    assert head.x_cache == "HIT" and head.body == b""
    assert head.headers["Content-Length"] == str(len(get.body))
    assert stack.upstream_hits(PATIENT) == 1


async def test_credentials_never_cross(stack: Stack) -> None:
    alice = await stack.proxy.get(PATIENT, token=TOKEN_A)
    bob = await stack.proxy.get(PATIENT, token=TOKEN_B)
    cookie = await stack.proxy.get(PATIENT, token=None, headers={"Cookie": "session=alice"})
    anonymous = await stack.proxy.get(PATIENT, token=None)
    denied = await stack.proxy.get(PATIENT, token="Bearer denied-mallory")
    assert bob.x_cache == "MISS"
    assert bob.json()["meta"]["caller"] != alice.json()["meta"]["caller"]
    assert cookie.status == 401 and cookie.x_cache == "MISS"
    assert anonymous.status == 401 and anonymous.x_cache == "MISS"
    assert denied.status == 403 and b"Patient" not in denied.body
    again = await stack.proxy.get(PATIENT, token=TOKEN_A)
    assert again.x_cache == "HIT" and again.body == alice.body


ECHO_RULES = """
service: identity
rules:
  - name: echo
    path: /api/v1/echo/headers
    key: identity:echo:headers
    ttl: 60
"""


async def test_anonymous_callers_share_only_with_each_other(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack(rules_yaml=ECHO_RULES)
    first = await stack.proxy.get("/api/v1/echo/headers", token=None)
    second = await stack.proxy.get("/api/v1/echo/headers", token=None)
    assert (first.x_cache, second.x_cache) == ("MISS", "HIT")
    authed = await stack.proxy.get("/api/v1/echo/headers", token=TOKEN_A)
    assert authed.x_cache == "MISS"
    assert ["Authorization", TOKEN_A] in authed.json()["headers"]
    assert ["Authorization", TOKEN_A] not in second.json()["headers"]
    assert await redis_client.hlen("identity:echo:headers") == 2


async def test_gzip_body_only_to_callers_that_accept_it(stack: Stack) -> None:
    zipped = await stack.proxy.get(PATIENT, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    plain = await stack.proxy.get(PATIENT)
    assert plain.x_cache == "MISS" and "Content-Encoding" not in plain.headers
    assert gzip.decompress(zipped.body) == plain.body
    assert (await stack.proxy.get(PATIENT)).headers.get("Content-Encoding") is None
    hit = await stack.proxy.get(PATIENT, headers={"Accept-Encoding": "gzip, deflate"})
    assert hit.x_cache == "MISS"  # another variant (gzip+deflate), fetched once
    refused = await stack.proxy.get(PATIENT, headers={"Accept-Encoding": "gzip;q=0"})
    assert refused.headers.get("Content-Encoding") is None and refused.x_cache == "HIT"


async def test_cache_disabled_bypasses_everything(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack({"CACHE_ENABLED": "false"})
    for _ in range(2):
        reply = await stack.proxy.get(PATIENT)
        assert reply.status == 200 and reply.x_cache == "BYPASS"
        assert "detail=disabled" in reply.headers["Cache-Status"]
    assert stack.upstream_hits(PATIENT) == 2
    assert await redis_client.keys("*") == []
    assert (await stack.admin.get("/readyz", token=None)).json()["cache"] == "disabled"


async def test_memory_backend_has_the_same_semantics(make_stack: StackFactory) -> None:
    stack = await make_stack(redis_url="memory://")
    assert (await stack.proxy.get(PATIENT)).x_cache == "MISS"
    assert (await stack.proxy.get(PATIENT)).x_cache == "HIT"
    assert (await stack.proxy.get(PATIENT, token=TOKEN_B)).x_cache == "MISS"
    assert stack.rt.cache is not None and stack.rt.cache.store.name == "memory"


async def test_no_cache_request_refreshes_the_entry(stack: Stack) -> None:
    await stack.proxy.get(PATIENT)
    fresh = await stack.proxy.get(PATIENT, headers={"Cache-Control": "no-cache"})
    assert fresh.x_cache == "MISS" and "fwd=request" in fresh.headers["Cache-Status"]
    assert stack.upstream_hits(PATIENT) == 2
    assert (await stack.proxy.get(PATIENT)).x_cache == "HIT"


async def test_conditional_request_gets_304_from_cache(stack: Stack) -> None:
    first = await stack.proxy.get(PATIENT)
    etag = first.headers["ETag"]
    hit = await stack.proxy.get(PATIENT, headers={"If-None-Match": etag})
    assert (hit.status, hit.x_cache, hit.body) == (304, "HIT", b"")
    assert hit.headers["ETag"] == etag
    other = await stack.proxy.get(PATIENT, headers={"If-None-Match": '"nope"'})
    assert other.status == 200 and other.body == first.body
    since = await stack.proxy.get(
        PATIENT, headers={"If-Modified-Since": first.headers["Last-Modified"]})
    assert since.status == 304


async def test_conditional_miss_still_stores_the_full_body(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack({"CACHE_NEAR_MAX_BYTES": "0"})  # deletes behind the sidecar
    etag = (await stack.proxy.get("/api/v1/patients/7")).headers["ETag"]
    await stack.rt.cache.store.delete(["identity:patient:7"])  # type: ignore[union-attr]
    reply = await stack.proxy.get("/api/v1/patients/7", headers={"If-None-Match": etag})
    assert reply.status == 304 and reply.x_cache == "MISS"
    full = await stack.proxy.get("/api/v1/patients/7")
    assert full.status == 200 and full.x_cache == "HIT" and full.body


async def test_generated_etag_when_upstream_sends_none(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack(rules_yaml=ECHO_RULES)
    reply = await stack.proxy.get("/api/v1/echo/headers", token=None)
    assert reply.headers["ETag"].startswith('"sc-')
    hit = await stack.proxy.get("/api/v1/echo/headers", token=None,
                                headers={"If-None-Match": reply.headers["ETag"]})
    assert (hit.status, hit.x_cache) == (304, "HIT")


async def test_longest_accepted_ttl_and_stale_window_are_stored_and_read_back(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    """The rules' caps (a year each) fit Redis EXPIRE and what an entry may decode."""
    from sidecar.rules import MAX_STALE_SECONDS, MAX_TTL_SECONDS
    stack = await make_stack({"CACHE_TTL_PATIENT": str(MAX_TTL_SECONDS)},
                             rules_yaml=f"""
rules:
  - name: patient
    path: /api/v1/patients/{{id}}
    key: identity:patient:{{id}}
    ttl_env: CACHE_TTL_PATIENT
    stale: {{while_revalidate: {MAX_STALE_SECONDS}, if_error: {MAX_STALE_SECONDS}}}
""")
    assert (await stack.proxy.get(PATIENT)).x_cache == "MISS"
    hit = await stack.proxy.get(PATIENT)
    assert hit.x_cache == "HIT"
    assert int(hit.headers["Cache-Status"].rsplit("ttl=", 1)[1]) > MAX_TTL_SECONDS - 60
    expiry = await redis_client.ttl("identity:patient:42")
    assert MAX_TTL_SECONDS + MAX_STALE_SECONDS - 60 < expiry <= MAX_TTL_SECONDS + MAX_STALE_SECONDS
