"""What the sidecar sends when it opens Redis connections: nothing the server rejects.

redis-py 8.1 sends `CLIENT MAINT_NOTIFICATIONS` on every new RESP3 connection; Redis 7.0
answers with an error (an extra round trip and a DEBUG line per connection). Redis shows
a rejected subcommand neither in MONITOR nor in a `cmdstat_*` line, but counts its error
reply in `INFO stats` (`total_error_replies`).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from sidecar.coordination import RedisCoordinator
from tests.conftest import StackFactory
from tests.redis_process import RedisProcess


async def test_new_connections_send_nothing_redis_7_rejects(
    make_stack: StackFactory, own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="redis"):
        stack = await make_stack(redis_url=own_redis.url)
        coordinator = stack.rt.coordinator
        assert isinstance(coordinator, RedisCoordinator)
        await asyncio.wait_for(coordinator._subscribed.wait(), 10)  # the pub/sub connection
        # Concurrent cold reads: several pool connections, lease calls and stores.
        replies = await asyncio.gather(*[stack.proxy.get(f"/api/v1/patients/{n}")
                                         for n in range(1, 9)])
        assert {r.status for r in replies} == {200}
        await stack.rt.flights.idle()
    stats = own_redis.info("stats")
    commands = own_redis.info("commandstats")
    handshakes = int(commands["cmdstat_hello"].split("calls=", 1)[1].split(",", 1)[0])
    assert handshakes >= 3, commands  # several connections were really opened
    assert stats["total_error_replies"] == "0", own_redis.info("errorstats")
    assert not [r for r in caplog.records if "maintenance notifications" in r.getMessage()]
