"""`mode: rfc9111`: the origin's Cache-Control and Expires set freshness; the rule's TTL
caps it; request directives (RFC 9111 §5.2.1) are honoured. `mode: ttl` ignores all this."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sidecar.reload import Reloader
from tests.conftest import Stack, StackFactory
from tests.test_odd_upstreams import raw_upstream

PATIENT = "/api/v1/patients/42"
ROUTES = (Path(__file__).resolve().parent.parent / "config" / "routes.yaml").read_text()
RFC9111_ROUTES = ROUTES.replace("    ttl_env: CACHE_TTL_PATIENT\n",
                                "    ttl_env: CACHE_TTL_PATIENT\n    mode: rfc9111\n", 1)
assert RFC9111_ROUTES != ROUTES


def _advance(stack: Stack, seconds: float) -> None:
    clock = stack.rt.clock
    stack.rt.set_clock(lambda: clock() + seconds)


def _origin(value: str) -> dict[str, str]:
    return {"X-Stub-Header": f"Cache-Control: {value}"}


async def _rfc(make_stack: StackFactory) -> Stack:
    return await make_stack(rules_yaml=RFC9111_ROUTES)


async def test_origin_max_age_sets_freshness_under_the_rule_ttl(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await _rfc(make_stack)
    await stack.proxy.get(PATIENT, headers=_origin("max-age=60"))
    _advance(stack, 30)
    assert (await stack.proxy.get(PATIENT, headers=_origin("max-age=60"))).x_cache == "HIT"
    _advance(stack, 40)  # 70 s: stale for the origin, fresh for the 600 s rule
    reply = await stack.proxy.get(PATIENT, headers=_origin("max-age=60"))
    assert reply.x_cache == "STALE"  # inside the rule's 30 s stale-while-revalidate


async def test_the_rule_ttl_is_the_upper_bound(make_stack: StackFactory, redis_client: Redis
                                               ) -> None:
    stack = await _rfc(make_stack)
    await stack.proxy.get(PATIENT, headers=_origin("max-age=86400"))
    _advance(stack, 600 + 31)
    assert (await stack.proxy.get(PATIENT, headers=_origin("max-age=86400"))).x_cache == "MISS"


async def test_ttl_mode_ignores_the_origin(stack: Stack) -> None:
    await stack.proxy.get(PATIENT, headers=_origin("max-age=60"))
    _advance(stack, 300)
    assert (await stack.proxy.get(PATIENT, headers=_origin("max-age=60"))).x_cache == "HIT"


async def test_expires_counts_from_date(make_stack: StackFactory, redis_client: Redis) -> None:
    stack = await _rfc(make_stack)
    now = formatdate(usegmt=True)
    hooks = [("X-Stub-Header", f"Date: {now}"),
             ("X-Stub-Header", f"Expires: {formatdate(_epoch(now) + 20, usegmt=True)}")]
    await stack.proxy.get(PATIENT, headers=hooks)
    _advance(stack, 10)
    assert (await stack.proxy.get(PATIENT, headers=hooks)).x_cache == "HIT"
    _advance(stack, 60)  # 70 s: past Expires and past the 30 s stale window
    assert (await stack.proxy.get(PATIENT, headers=hooks)).x_cache == "MISS"


def _epoch(http_date: str) -> float:
    from email.utils import parsedate_to_datetime
    return parsedate_to_datetime(http_date).timestamp()


async def test_no_cache_is_stored_and_revalidated_before_every_use(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await _rfc(make_stack)
    first = await stack.proxy.get(PATIENT, headers=_origin("no-cache"))
    assert "stored" in first.headers["Cache-Status"]
    assert await redis_client.hgetall("identity:patient:42") != {}
    again = await stack.proxy.get(PATIENT, headers=_origin("no-cache"))
    assert again.x_cache == "MISS" and "fwd-status=304" in again.headers["Cache-Status"]
    assert again.body == first.body and stack.upstream_hits(PATIENT) == 2


async def test_must_revalidate_forbids_stale_serving(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await _rfc(make_stack)
    cc = _origin("max-age=10, must-revalidate")
    await stack.proxy.get(PATIENT, headers=cc)
    _advance(stack, 15)  # inside the rule's stale windows, but the origin forbids them
    reply = await stack.proxy.get(PATIENT, headers=cc)
    assert reply.x_cache == "MISS" and "fwd-status=304" in reply.headers["Cache-Status"]
    _advance(stack, 15)
    down = await stack.proxy.get(PATIENT, headers={**cc, "X-Stub-Status": "503"})
    assert down.status == 503 and down.x_cache == "MISS"  # no stale-if-error


async def test_origin_stale_while_revalidate_replaces_the_rules(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await _rfc(make_stack)
    cc = _origin("max-age=10, stale-while-revalidate=5")
    await stack.proxy.get(PATIENT, headers=cc)
    _advance(stack, 13)
    assert (await stack.proxy.get(PATIENT, headers=cc)).x_cache == "STALE"
    await stack.rt.flights.idle()
    _advance(stack, 10 + 8)  # 8 s stale after the refresh: past the origin's 5 s
    assert (await stack.proxy.get(PATIENT, headers=cc)).x_cache == "MISS"


async def test_request_max_age_and_min_fresh(make_stack: StackFactory, redis_client: Redis
                                             ) -> None:
    stack = await _rfc(make_stack)
    cc = _origin("max-age=100")
    await stack.proxy.get(PATIENT, headers=cc)
    _advance(stack, 50)
    assert (await stack.proxy.get(PATIENT, headers=cc)).x_cache == "HIT"
    old = await stack.proxy.get(PATIENT, headers={**cc, "Cache-Control": "max-age=20"})
    assert old.x_cache == "MISS" and "fwd-status=304" in old.headers["Cache-Status"]
    _advance(stack, 60)  # 60 s into the refreshed entry's 100
    short = await stack.proxy.get(PATIENT, headers={**cc, "Cache-Control": "min-fresh=50"})
    assert short.x_cache == "MISS"


async def test_only_if_cached_never_asks_the_upstream(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await _rfc(make_stack)
    empty = await stack.proxy.get(PATIENT, headers={"Cache-Control": "only-if-cached"})
    assert empty.status == 504 and stack.upstream_hits(PATIENT) == 0
    await stack.proxy.get(PATIENT)
    cached = await stack.proxy.get(PATIENT, headers={"Cache-Control": "only-if-cached"})
    assert cached.status == 200 and cached.x_cache == "HIT"
    assert stack.upstream_hits(PATIENT) == 1


async def test_request_max_stale_is_bounded_by_the_stale_window_and_refreshes(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    """max-stale never reaches past the rule's window, and still refreshes, so a caller
    whose token the service now refuses gets its 401 (found by attack)."""
    stack = await _rfc(make_stack)
    cc = _origin("max-age=10")
    first = await stack.proxy.get(PATIENT, headers=cc)
    _advance(stack, 25)  # 15 s stale: inside the rule's 30 s window
    asked = {**cc, "Cache-Control": "max-stale=200", "X-Stub-Status": "401"}
    reply = await stack.proxy.get(PATIENT, headers=asked)
    assert reply.x_cache == "STALE" and reply.body == first.body
    assert "detail=max-stale" in reply.headers["Cache-Status"]
    await stack.rt.flights.idle()  # the refresh got the 401 and dropped the copy
    assert (await stack.proxy.get(PATIENT, headers=asked)).status == 401
    await stack.proxy.get(PATIENT, headers=cc)
    _advance(stack, 600 + 800)  # far past the window: max-stale does not reach it
    late = await stack.proxy.get(PATIENT, headers={**cc, "Cache-Control": "max-stale"})
    assert late.x_cache == "MISS"


@pytest.mark.parametrize("cc", ["max-age=-1", "max-age=abc", "max-age=0;", "max-age=1.5",
                                "s-maxage=-1"])
async def test_an_invalid_max_age_is_stale_not_heuristic(
    make_stack: StackFactory, redis_client: Redis, cc: str
) -> None:
    stack = await _rfc(make_stack)
    await stack.proxy.get(PATIENT, headers=_origin(cc))
    _advance(stack, 300)
    assert (await stack.proxy.get(PATIENT, headers=_origin(cc))).x_cache != "HIT"


async def test_a_response_already_old_by_its_date_is_not_fresh(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    now = time.time()
    lines = [f"Date: {formatdate(now - 7200, usegmt=True)}",
             f"Expires: {formatdate(now - 3600, usegmt=True)}", 'ETag: "v1"']

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b'{"id":"42"}'
        writer.write(("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      + "".join(line + "\r\n" for line in lines)
                      + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        await writer.drain()

    async with raw_upstream(serve) as (url, _):
        stack = await make_stack({"UPSTREAM_URL": url}, rules_yaml=RFC9111_ROUTES)
        first = await stack.proxy.get(PATIENT)
    assert "detail=too-old" in first.headers["Cache-Status"]  # 2 h old against a 600 s cap


async def test_entries_stored_in_ttl_mode_follow_the_origin_after_a_reload(
    make_stack: StackFactory, redis_client: Redis, tmp_path: Path
) -> None:
    stack = await make_stack()
    cc = _origin("max-age=10, must-revalidate")
    await stack.proxy.get(PATIENT, headers=cc)
    routes = tmp_path / "routes.yaml"
    routes.write_text(RFC9111_ROUTES)
    assert Reloader(stack.rt, routes).reload("test")
    _advance(stack, 100)
    assert (await stack.proxy.get(PATIENT, headers=cc)).x_cache == "MISS"  # revalidated

VARY_ROUTES = ROUTES.replace("    ttl_env: CACHE_TTL_PATIENT\n",
                             "    ttl_env: CACHE_TTL_PATIENT\n    vary: [Accept-Language]\n", 1)


async def test_vary_on_a_header_the_rule_keys_on_is_stored_per_value(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack(rules_yaml=VARY_ROUTES)
    varies = {"X-Stub-Header": "Vary: Accept-Language"}

    async def get(language: str | None) -> str | None:
        extra = {} if language is None else {"Accept-Language": language}
        return (await stack.proxy.get(PATIENT, headers={**varies, **extra})).x_cache

    assert await get("fr") == "MISS"
    assert await get("fr") == "HIT"
    assert await get("fr ,  en;q=0.5") == "MISS"
    assert await get("fr,en;q=0.5") == "HIT"  # RFC 9111 §4.1: whitespace normalised
    assert await get("de") == "MISS"
    assert await get(None) == "MISS"  # absent is its own variant
    assert await get("") == "MISS"    # and so is empty
    assert len(await redis_client.hgetall("identity:patient:42")) == 5


async def test_vary_on_a_header_the_rule_does_not_key_on_is_not_stored(stack: Stack) -> None:
    reply = await stack.proxy.get(PATIENT, headers={"X-Stub-Header": "Vary: Accept-Language",
                                                    "Accept-Language": "fr"})
    assert "detail=vary" in reply.headers["Cache-Status"]
