"""The backend boundary: redis-py's exceptions become `CacheUnavailable` there, once."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeout

from sidecar.errors import CacheTimeout, CacheUnavailable
from sidecar.redis_store import mapped


@pytest.mark.parametrize("raised", [RedisTimeout("slow"), TimeoutError()])
def test_timeouts_become_cache_timeouts(raised: Exception) -> None:
    with pytest.raises(CacheTimeout) as caught, mapped():
        raise raised
    assert isinstance(caught.value, TimeoutError)  # counted as reason="timeout"
    assert caught.value.__cause__ is raised


@pytest.mark.parametrize("raised", [RedisConnectionError("refused"), MovedError("3999 h:1"),
                                    RedisClusterException("no node"), OSError("reset")])
def test_other_failures_become_cache_unavailable(raised: Exception) -> None:
    with pytest.raises(CacheUnavailable) as caught, mapped():
        raise raised
    assert not isinstance(caught.value, TimeoutError)
    assert caught.value.__cause__ is raised  # the guard's warning names it


def test_cancellation_and_our_own_bugs_pass_through() -> None:
    with pytest.raises(asyncio.CancelledError), mapped():
        raise asyncio.CancelledError
    with pytest.raises(KeyError), mapped():
        raise KeyError("a bug is not a cache outage")
