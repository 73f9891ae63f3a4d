"""Nothing is stored that must not be: each case is forwarded and leaves Redis empty."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tests.conftest import Stack

PATIENT = "/api/v1/patients/42"


@pytest.mark.parametrize(("hooks", "detail"), [
    ({"X-Stub-Status": "500"}, "status"),
    ({"X-Stub-Status": "404"}, "status"),
    ({"X-Stub-Status": "206"}, "status"),
    ({"X-Stub-Header": "Set-Cookie: session=abc"}, "set-cookie"),
    ({"X-Stub-Header": "Cache-Control: no-store"}, "response-no-store"),
    ({"X-Stub-Header": "Cache-Control: max-age=60, private"}, "response-private"),
    ({"X-Stub-Header": "Vary: *"}, "vary-star"),
    ({"X-Stub-Header": "Vary: Accept-Language"}, "vary"),
    ({"X-Stub-Body-Bytes": str(2 * 1024 * 1024)}, "too-large"),
])
async def test_response_is_relayed_but_not_stored(
    stack: Stack, redis_client: Redis, hooks: dict[str, str], detail: str
) -> None:
    first = await stack.proxy.get(PATIENT, headers=hooks)
    second = await stack.proxy.get(PATIENT, headers=hooks)
    assert first.x_cache == second.x_cache == "MISS"
    assert f"detail={detail}" in first.headers["Cache-Status"]
    assert await redis_client.exists("identity:patient:42") == 0
    if "Set-Cookie" in hooks.get("X-Stub-Header", ""):
        assert first.headers["Set-Cookie"] == "session=abc"


async def test_request_no_store_is_not_stored(stack: Stack, redis_client: Redis) -> None:
    reply = await stack.proxy.get(PATIENT, headers={"Cache-Control": "no-store"})
    assert reply.status == 200 and reply.x_cache == "BYPASS"
    assert await redis_client.exists("identity:patient:42") == 0


async def test_truncated_upstream_body_is_never_stored(stack: Stack, redis_client: Redis) -> None:
    reply = await stack.proxy.get(PATIENT, headers={"X-Stub-Close-Early": "1"})
    assert reply.status == 502 and reply.json()["error"] == "upstream_unavailable"
    assert await redis_client.exists("identity:patient:42") == 0


async def test_range_misses_and_body_requests_bypass(stack: Stack, redis_client: Redis
                                                      ) -> None:
    ranged = await stack.proxy.get(PATIENT, headers={"Range": "bytes=0-10"})  # see test_ranges
    assert ranged.x_cache == "BYPASS" and "detail=range" in ranged.headers["Cache-Status"]
    with_body = await stack.proxy.request("GET", PATIENT, data=b"{}")
    assert with_body.x_cache == "BYPASS"
    assert await redis_client.exists("identity:patient:42") == 0
