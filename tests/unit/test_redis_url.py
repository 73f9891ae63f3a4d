"""`REDIS_URL` for Sentinel and Cluster: what parses, what is refused and how it says so."""

from __future__ import annotations

import pytest

from sidecar.errors import ConfigError
from sidecar.redis_url import RedisTarget, parse_target
from sidecar.settings import Settings


def test_cluster_seeds_credentials_and_tls() -> None:
    assert parse_target("rediss+cluster://sidecar:p%40ss@r1:7000,r2,[::1]:7002") == RedisTarget(
        "cluster", True, (("r1", 7000), ("r2", 6379), ("::1", 7002)), "sidecar", "p@ss")


def test_sentinel_service_and_db() -> None:
    assert parse_target("redis+sentinel://s1:26379,s2/cache/2") == RedisTarget(
        "sentinel", False, (("s1", 26379), ("s2", 26379)), service="cache", db=2)


def test_plain_urls_are_left_to_redis_py() -> None:
    assert parse_target("redis://cache:6379/0") == RedisTarget("standalone", False)
    assert parse_target("rediss://cache:6380/0").tls


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+sentinel://s1:26379", "names no service"),
    ("redis+sentinel://s1/cache/x", "not a whole number"),
    ("redis+cluster://r1:7000/3", "a cluster has only db 0"),
    ("redis+cluster://r1:99999", "bad port '99999'"),
    ("redis+cluster://r1,,r2", "empty host"),
    ("redis+cluster://r_1:7000", "odd host"),
    ("redis+sentinel://s1/ca che", "odd service name"),
])
def test_malformed_ha_urls_are_refused_with_the_form(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_URL": url})
    [message] = caught.value.problems
    assert problem in message
    assert "(accepted: redis+" in message


def test_the_password_never_reaches_the_message() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_URL": "redis+cluster://u:hunter2@r1:0"})
    assert "hunter2" not in str(caught.value)


def test_an_unknown_ha_scheme_lists_the_accepted_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_URL": "redis+clustr://r1:7000"})
    assert "redis+cluster://" in str(caught.value) and "redis+sentinel://" in str(caught.value)
