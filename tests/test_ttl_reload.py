"""A TTL changed by hot reload applies to entries already stored (docs/caching.md)."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from sidecar.reload import Reloader
from tests.conftest import ROUTES, Stack, StackFactory

PATIENT = "/api/v1/patients/42"


def _advance(stack: Stack, seconds: float) -> None:
    clock = stack.rt.clock
    stack.rt.set_clock(lambda: clock() + seconds)


def _reload_with_ttl(stack: Stack, tmp_path: Path, ttl: int) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES.read_text().replace(
        "ttl: 600\n    ttl_env: CACHE_TTL_PATIENT", f"ttl: {ttl}\n    ttl_env: CACHE_TTL_PATIENT"))
    assert Reloader(stack.rt, path).reload("test")
    assert stack.rt.rules.rules[0].ttl == ttl


async def test_lowering_a_ttl_expires_stored_entries_now(
    make_stack: StackFactory, redis_client: Redis, tmp_path: Path
) -> None:
    stack = await make_stack()
    assert (await stack.proxy.get(PATIENT)).x_cache == "MISS"
    _advance(stack, 120)
    assert (await stack.proxy.get(PATIENT)).x_cache == "HIT"  # 120 s into 600
    _reload_with_ttl(stack, tmp_path, 60)  # an operator during an incident
    reply = await stack.proxy.get(PATIENT)
    assert reply.x_cache == "MISS"  # 120 s old, past 60 s and its 30 s revalidate window
    assert stack.upstream_hits(PATIENT) == 2


async def test_the_new_ttl_counts_from_when_the_entry_was_stored(
    make_stack: StackFactory, redis_client: Redis, tmp_path: Path
) -> None:
    stack = await make_stack()
    await stack.proxy.get(PATIENT)
    _advance(stack, 10)
    _reload_with_ttl(stack, tmp_path, 60)
    reply = await stack.proxy.get(PATIENT)
    assert reply.x_cache == "HIT"
    assert "ttl=50" in reply.headers["Cache-Status"] or "ttl=49" in reply.headers["Cache-Status"]
    _advance(stack, 60)  # 70 s old: stale, inside the 30 s revalidate window
    assert (await stack.proxy.get(PATIENT)).x_cache == "STALE"
