"""The sidecar against a redis-server with TLS (client certificates) and the documented
least-privilege ACL user: everything it does must work with only those commands.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError

from sidecar.coordination import RedisCoordinator
from tests.conftest import TOKEN_A, StackFactory
from tests.redis_process import free_port
from tests.tls_certs import make_certs
from tests.waiting import until, within

ACL_FILE = Path(__file__).resolve().parent.parent / "deploy" / "redis" / "users.acl"
PASSWORD = "sidecar-test-password"


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, dict[str, Path]]]:
    certs = make_certs(tmp_path)
    acl = ACL_FILE.read_text().replace("<password>", PASSWORD)
    (tmp_path / "users.acl").write_text(acl)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
         "--tls-cert-file", str(certs["server"].with_suffix(".crt")),
         "--tls-key-file", str(certs["server"].with_suffix(".key")),
         "--tls-ca-cert-file", str(certs["ca"].with_suffix(".crt")),
         "--tls-auth-clients", "yes", "--aclfile", str(tmp_path / "users.acl")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield port, certs
    finally:
        proc.kill()
        proc.wait()


async def _wait_ready(client: Redis) -> None:
    async def answers() -> bool:
        try:
            return bool(await client.ping())
        except (RedisError, OSError):  # still starting
            return False
    await until(answers, "TLS redis-server answering PING")


async def test_sidecar_caches_through_tls_with_the_acl_user(
    tls_redis: tuple[int, dict[str, Path]], make_stack: StackFactory
) -> None:
    port, certs = tls_redis
    tls = {"REDIS_TLS_CA_FILE": str(certs["ca"].with_suffix(".crt")),
           "REDIS_TLS_CERT_FILE": str(certs["client"].with_suffix(".crt")),
           "REDIS_TLS_KEY_FILE": str(certs["client"].with_suffix(".key"))}
    url = f"rediss://sidecar:{PASSWORD}@127.0.0.1:{port}/0"
    probe = Redis.from_url(url, ssl_ca_certs=tls["REDIS_TLS_CA_FILE"],
                           ssl_certfile=tls["REDIS_TLS_CERT_FILE"],
                           ssl_keyfile=tls["REDIS_TLS_KEY_FILE"])
    try:
        await _wait_ready(probe)
        stack = await make_stack(tls, redis_url=url)  # the suite's generous budgets
        assert stack.rt.coordinator.enabled
        assert isinstance(stack.rt.coordinator, RedisCoordinator)
        await within(stack.rt.coordinator._subscribed.wait(), "coordinator subscribed")
        path = "/api/v1/patients/42"
        assert (await stack.proxy.get(path)).x_cache == "MISS"
        assert (await stack.proxy.get(path)).x_cache == "HIT"
        put = await stack.proxy.request("PUT", path, data=b"{}", token=TOKEN_A)
        assert put.status == 200
        assert (await stack.proxy.get(path)).x_cache == "MISS"
        purge = await stack.admin.request("DELETE", "/cache?prefix=identity:patient&confirm=yes",
                                          token=None)
        assert purge.status == 200 and purge.json()["removed"] == 1
        errors = [line for line in (await stack.admin.get("/metrics", token=None))
                  .body.decode().splitlines() if line.startswith("cache_errors_total")]
        assert errors == []
        # Least privilege: nothing outside the namespace, no dangerous commands.
        with pytest.raises(NoPermissionError):
            await probe.set("other:key", "x")
        with pytest.raises(NoPermissionError):
            await probe.flushall()
        with pytest.raises(NoPermissionError):
            await probe.keys("*")
    finally:
        await probe.aclose()
