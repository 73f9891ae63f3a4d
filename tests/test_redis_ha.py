"""The sidecar on Redis HA, against real processes started once for the module: a 6-node
Redis Cluster (3 masters, 3 replicas) and a Sentinel set (1 master, 1 replica, 3 Sentinels).

What a user sees: MISS then HIT on both, entries spread over the masters, a write that
invalidates, purges that reach every master, two sidecars sharing one fetch through the
lease, a `redis://` URL at a cluster node refused at start-up, the hot key's slot moved to
another master under load, and, last (they kill a master), failovers that every request
rides out with a 200, the right body and in under a second, while /readyz says
`cache=degraded`, with caching back after the promotion. A TLS-only cluster and a TLS-only
master and Sentinel, with the deploy ACL user, check `rediss+cluster://`,
`rediss+sentinel://` and the grants they need.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from tests.conftest import REDIS_FAULT_BUDGETS, TOKEN_A, Client, Stack, StackFactory
from tests.redis_process import RedisProcess
from tests.sidecar_process import SidecarProcess
from tests.tls_certs import make_certs
from tests.waiting import PATIENCE, until

pytestmark = pytest.mark.timeout(90)
SERVICE = "cache"
HOT = "/api/v1/patients/42"
JSON = {"Content-Type": "application/json"}
# Production budgets, so a dead master costs little; the breaker keeps its default (5).
# No near tier: every answer goes through Redis, the hard case.
FAILOVER_ENV = {**REDIS_FAULT_BUDGETS, "REDIS_TIMEOUT_MS": "200",
                "REDIS_CONNECT_TIMEOUT_MS": "200", "CACHE_BREAKER_COOLDOWN_S": "0.5",
                "CACHE_NEAR_MAX_BYTES": "0"}
ANSWER_BUDGET = 1.0  # the promise: no answer over one second during a failover

if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
    pytest.skip("redis-server and redis-cli are needed", allow_module_level=True)


def _ha_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, so at most 55535."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port > 55535:
            continue
        try:
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


def _sync(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def _command(port: int, *args: str) -> Any:
    """One command on a node or Sentinel (redis-py leaves `execute_command` untyped)."""
    return _sync(port).execute_command(*args)  # type: ignore[no-untyped-call]


def _poll(check: Any, what: str, seconds: float = PATIENCE) -> None:
    """Readiness of other processes at fixture set-up (no event loop there yet)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)  # polling another process: there is no event to await
    raise AssertionError(f"{what}: not within {seconds:g} s")


@dataclass
class Cluster:
    nodes: list[RedisProcess]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def primaries(self) -> list[RedisProcess]:
        live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        return [n for n in live if _sync(n.port).info("replication")["role"] == "master"]

    def owner(self, key: str) -> RedisProcess:
        """The master that holds `key` now."""
        seed = self.primaries()[0]
        client = RedisCluster(host="127.0.0.1", port=seed.port)
        try:
            port = client.get_node_from_key(key).port  # type: ignore[no-untyped-call]
        finally:
            client.close()
        return next(n for n in self.nodes if n.port == port)

    def keys(self, pattern: str) -> dict[int, list[bytes]]:
        """Keys matching `pattern` on each live master, by port."""
        return {n.port: list(_sync(n.port).scan_iter(match=pattern)) for n in self.primaries()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nodes = []
    for i in range(6):
        node = RedisProcess(tmp_path_factory.mktemp(f"cluster-{i}"), "--cluster-enabled", "yes",
                            "--cluster-node-timeout", "1000",
                            # A cache: the other shards keep serving while one fails over.
                            "--cluster-require-full-coverage", "no")
        node.port = _ha_port()
        nodes.append(node)
    try:
        for node in nodes:
            node.start()
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in nodes),
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)

        def formed() -> bool:
            infos = [_command(n.port, "CLUSTER INFO") for n in nodes]
            synced = all(_sync(n.port).info("replication").get("master_link_status", "up")
                         == "up" for n in nodes)
            return synced and all(i["cluster_state"] == "ok" and i["cluster_known_nodes"] == "6"
                                  for i in infos)

        _poll(formed, "cluster formed, replicas in sync")
        yield Cluster(nodes)
    finally:
        for node in nodes:
            node.stop()


@dataclass
class SentinelSet:
    master: RedisProcess
    replica: RedisProcess
    sentinel_ports: list[int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(
            f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{SERVICE}/0"

    def current_master(self) -> int:
        _host, port = _command(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                               SERVICE)
        return int(port)


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    master = RedisProcess(tmp_path_factory.mktemp("sentinel-master"))
    master.start()
    replica = RedisProcess(tmp_path_factory.mktemp("sentinel-replica"),
                           "--replicaof", "127.0.0.1", str(master.port))
    group = SentinelSet(master, replica, [_ha_port() for _ in range(3)])
    try:
        replica.start()
        for port in group.sentinel_ports:
            workdir = tmp_path_factory.mktemp(f"sentinel-{port}")
            conf = workdir / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n")
            group.procs.append(subprocess.Popen(
                ["redis-server", str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))

        def known() -> bool:  # each Sentinel knows the replica and the two others
            for port in group.sentinel_ports:
                if not (_command(port, "SENTINEL", "REPLICAS", SERVICE)
                        and len(_command(port, "SENTINEL", "SENTINELS", SERVICE)) == 2):
                    return False
            return bool(_sync(replica.port).info("replication")["master_link_status"] == "up")

        _poll(known, "Sentinels discovered each other and the replica")
        yield group
    finally:
        for proc in group.procs:
            proc.kill()
            proc.wait()
        replica.stop()
        master.stop()


async def _subscribed(stack: Stack) -> None:
    async def check() -> bool:
        return bool((await stack.admin.get("/readyz", token=None)).json()["coordination"]
                    == "subscribed")
    await until(check, "coordinator subscribed")


async def _readyz(stack: Stack) -> dict[str, Any]:
    reply = await stack.admin.get("/readyz", token=None)
    assert reply.status == 200  # fail-open: ready whatever the cache does
    result: dict[str, Any] = reply.json()
    return result


# --- Cluster -------------------------------------------------------------------------------

async def test_cluster_miss_then_hit_with_entries_on_every_master(
    make_stack: StackFactory, cluster: Cluster
) -> None:
    stack = await make_stack(redis_url=cluster.url)
    paths = [f"/api/v1/patients/{n}" for n in range(100, 130)]
    assert [(await stack.proxy.get(p)).x_cache for p in paths] == ["MISS"] * len(paths)
    await stack.rt.flights.idle()
    assert [(await stack.proxy.get(p)).x_cache for p in paths] == ["HIT"] * len(paths)
    spread = cluster.keys("identity:patient:1*")
    assert len(spread) == 3 and all(spread.values()), spread  # every master holds some
    assert sum(len(v) for v in spread.values()) == len(paths)
    ready = await _readyz(stack)
    assert ready["cache"] == "redis-cluster" and ready["breaker"] == "closed"


async def test_cluster_write_invalidates(make_stack: StackFactory, cluster: Cluster) -> None:
    stack = await make_stack(redis_url=cluster.url)
    path = "/api/v1/patients/7"
    await stack.proxy.get(path)
    await stack.rt.flights.idle()
    assert (await stack.proxy.get(path)).x_cache == "HIT"
    written = await stack.proxy.request("PATCH", path, headers=JSON, data=b'{"gender": "x"}')
    assert written.status == 200
    again = await stack.proxy.get(path)
    assert again.x_cache == "MISS" and again.json()["meta"]["versionId"] == 2


async def test_cluster_purge_by_key_and_by_prefix_reaches_every_master(
    make_stack: StackFactory, cluster: Cluster
) -> None:
    stack = await make_stack(redis_url=cluster.url)
    for n in range(200, 230):
        await stack.proxy.get(f"/api/v1/patients/{n}")
    await stack.rt.flights.idle()
    one = await stack.admin.request("DELETE", "/cache/identity:patient:200", token=None)
    assert one.status == 200 and one.json()["removed"] == 1
    assert (await stack.proxy.get("/api/v1/patients/200")).x_cache == "MISS"
    await stack.rt.flights.idle()
    before = sum(len(v) for v in cluster.keys("identity:patient:*").values())
    assert before >= 30
    bulk = await stack.admin.request("DELETE", "/cache?prefix=identity:patient&confirm=yes",
                                     token=None)
    assert bulk.status == 200 and bulk.json()["removed"] == before
    assert cluster.keys("identity:patient:*") == {n.port: [] for n in cluster.primaries()}


async def test_two_sidecars_share_one_fetch_through_the_lease_on_a_cluster(
    make_stack: StackFactory, cluster: Cluster
) -> None:
    lease = {"CACHE_LEASE_S": "10", "CACHE_LEASE_WAIT_S": "10"}
    one, two = await make_stack(lease, redis_url=cluster.url), await make_stack(
        lease, redis_url=cluster.url)
    for s in (one, two):
        await _subscribed(s)
    path = "/api/v1/patients/31337"
    slow = {"X-Stub-Delay-Ms": "300"}
    replies = await asyncio.gather(*[s.proxy.get(path, headers=slow)
                                     for s in (one, two) for _ in range(10)])
    assert {r.status for r in replies} == {200}
    assert len({r.body for r in replies}) == 1
    assert one.upstream_hits(path) == 1  # the other sidecar was woken by the fill
    scraped = "".join([(await s.admin.get("/metrics", token=None)).body.decode()
                       for s in (one, two)])
    assert 'cache_coalesced_total{key_prefix="identity:patient",scope="replica"}' in scraped


async def test_redis_url_at_a_cluster_node_is_refused_at_start(cluster: Cluster) -> None:
    sidecar = SidecarProcess({"REDIS_URL": f"redis://127.0.0.1:{cluster.nodes[0].port}/0"})
    sidecar.launch()
    try:
        code = await sidecar.exit_code(within=PATIENCE)
        output = sidecar.output()
    finally:
        sidecar.stop()
    assert code == 78, output
    assert "redis+cluster://" in output and "MOVED" in output


@dataclass
class Load:
    """Eight callers asking for one hot entity in a loop, every answer checked."""

    client: Client
    expected: Any
    answers: list[tuple[int, float, bool, str | None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def caller(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            reply = await self.client.get(HOT, token=TOKEN_A)
            took = time.monotonic() - start
            right = reply.status == 200 and reply.json() == self.expected
            self.answers.append((reply.status, took, right, reply.x_cache))

    def check(self) -> str:
        bad = [a for a in self.answers if a[0] != 200 or not a[2]]
        slow = max(a[1] for a in self.answers)
        assert not bad, bad[:5]
        assert slow < ANSWER_BUDGET, f"slowest answer {slow:.3f} s"
        return f"{len(self.answers)} answers, slowest {slow * 1000:.0f} ms"


async def _ride_out_failover(make_stack: StackFactory, url: str, kill: Any,
                             caplog: pytest.LogCaptureFixture) -> str:
    """Kill the master under load: all answers right and fast, degraded seen, HIT again,
    and one log line for the new topology."""
    with caplog.at_level(logging.INFO, logger="sidecar.cache"):
        stack = await make_stack(FAILOVER_ENV, redis_url=url)
        await _subscribed(stack)
        return await _failover_under_load(stack, kill, caplog)


async def _start_load(stack: Stack) -> tuple[Load, list[asyncio.Future[None]]]:
    """The hot entity cached, then eight callers asking for it in a loop."""
    await stack.proxy.get(HOT)
    await stack.rt.flights.idle()
    hit = await stack.proxy.get(HOT)
    assert hit.x_cache == "HIT"
    load = Load(stack.proxy, hit.json())
    return load, [asyncio.ensure_future(load.caller()) for _ in range(8)]


async def _failover_under_load(stack: Stack, kill: Any, caplog: pytest.LogCaptureFixture) -> str:
    load, callers = await _start_load(stack)
    seen: set[str] = set()
    gauge: set[str] = set()
    try:
        await until(lambda: _answered(load, 20), "load running")
        killed_at = time.monotonic()
        kill()

        async def degraded() -> bool:
            seen.add((await _readyz(stack))["cache"])
            gauge.add(_gauge((await stack.admin.get("/metrics", token=None)).body.decode()))
            return "degraded" in seen
        await until(degraded, "/readyz reports cache=degraded", every=0.02)
        resumed = await until(lambda: _hits_again(load, killed_at), "caching resumes")
    finally:
        load.stop.set()
        await asyncio.gather(*callers)
    await until(lambda: _ready_name(stack), "/readyz reports the backend again")
    assert "0" in gauge
    assert _gauge((await stack.admin.get("/metrics", token=None)).body.decode()) == "1"
    topologies = [r.getMessage() for r in caplog.records
                  if r.getMessage().startswith("cache backend topology:")]
    assert len(topologies) == 2 and topologies[0] != topologies[1], topologies
    took = time.monotonic() - killed_at
    return f"{load.check()}; caching back {resumed:.1f} s after the kill ({took:.1f} s total)"


async def _answered(load: Load, count: int) -> bool:
    return len(load.answers) >= count


async def _hits_again(load: Load, since: float) -> bool:
    """Answers after the kill include a MISS (stored anew) followed by HITs."""
    tail = load.answers[-8:]
    return len(tail) == 8 and all(a[3] == "HIT" for a in tail) and any(
        a[3] != "HIT" for a in load.answers)


async def _ready_name(stack: Stack) -> bool:
    return bool((await _readyz(stack))["cache"] != "degraded")


def _gauge(metrics: str) -> str:
    line = next(x for x in metrics.splitlines() if x.startswith("cache_backend_up{"))
    return line.split()[1].removesuffix(".0")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _migrate_slot(cluster: Cluster, key: str) -> tuple[int, int]:
    """Move the slot holding `key` to another master, key by key, as `redis-cli --cluster
    reshard` does (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE); (from port, to port)."""
    src = cluster.owner(key)
    dst = next(n for n in cluster.primaries() if n.port != src.port)
    slot = str(_command(src.port, "CLUSTER", "KEYSLOT", key))
    src_id = _text(_command(src.port, "CLUSTER", "MYID"))
    dst_id = _text(_command(dst.port, "CLUSTER", "MYID"))
    _command(dst.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    _command(src.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while keys := _command(src.port, "CLUSTER", "GETKEYSINSLOT", slot, "100"):
        _command(src.port, "MIGRATE", "127.0.0.1", str(dst.port), "", "0", "5000", "KEYS",
                 *(_text(k) for k in keys))
    for node in cluster.primaries():
        _command(node.port, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    return src.port, dst.port


async def test_cluster_slot_of_the_hot_key_migrated_under_load(
    make_stack: StackFactory, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = await make_stack(FAILOVER_ENV, redis_url=cluster.url)
    load, callers = await _start_load(stack)
    try:
        await until(lambda: _answered(load, 20), "load running")
        started = time.monotonic()
        src, dst = await asyncio.to_thread(_migrate_slot, cluster, "identity:patient:42")
        moved = time.monotonic() - started
        count = len(load.answers)

        async def hits_after_move() -> bool:
            tail = load.answers[count:]
            return len(tail) >= 8 and all(a[3] == "HIT" for a in tail[-8:])
        await until(hits_after_move, "HITs served from the new owner")
    finally:
        load.stop.set()
        await asyncio.gather(*callers)
    assert cluster.owner("identity:patient:42").port == dst != src
    assert _sync(dst).exists("identity:patient:42") == 1
    with capsys.disabled():
        misses = sum(a[3] != "HIT" for a in load.answers)
        print(f"\ncluster slot migration: {load.check()}, {misses} not from the cache; "
              f"the move took {moved:.2f} s")


async def test_cluster_master_killed_under_load(
    make_stack: StackFactory, cluster: Cluster, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = cluster.owner("identity:patient:42")
    summary = await _ride_out_failover(make_stack, cluster.url, owner.kill, caplog)
    assert owner.port not in {n.port for n in cluster.primaries()}
    with capsys.disabled():
        print(f"\ncluster failover: {summary}")


# --- Sentinel ------------------------------------------------------------------------------

def _calls(port: int) -> dict[str, int]:
    """Commands the server ran, by name (scripts' own calls included), without health pings."""
    stats = _sync(port).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()
            if name not in ("cmdstat_ping", "cmdstat_info", "cmdstat_hello")}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


async def test_sentinel_miss_then_hit_and_invalidation(
    make_stack: StackFactory, sentinels: SentinelSet, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = await make_stack({"CACHE_NEAR_MAX_BYTES": "0"}, redis_url=sentinels.url)
    await _subscribed(stack)
    path = "/api/v1/patients/9"
    port = sentinels.master.port
    start = _calls(port)
    assert (await stack.proxy.get(path)).x_cache == "MISS"
    await stack.rt.flights.idle()
    missed = _calls(port)
    assert (await stack.proxy.get(path)).x_cache == "HIT"
    hit = _calls(port)
    assert _delta(missed, hit) == {"hget": 1}  # a hit is one HGET
    per_miss = _delta(start, missed)
    assert _sync(port).exists("identity:patient:9") == 1
    size = _command(port, "MEMORY", "USAGE", "identity:patient:9")
    value = len(_sync(port).hgetall("identity:patient:9").popitem()[1])
    written = await stack.proxy.request("PATCH", path, headers=JSON, data=b'{"gender": "x"}')
    assert written.status == 200
    assert (await stack.proxy.get(path)).x_cache == "MISS"
    assert (await _readyz(stack))["cache"] == "redis-sentinel"
    with capsys.disabled():
        print(f"\nRedis commands per miss: {sum(per_miss.values())} {per_miss}; "
              f"one entity with one variant: {size} bytes in Redis ({value} bytes of value)")


async def test_sentinel_master_killed_under_load(
    make_stack: StackFactory, sentinels: SentinelSet, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    summary = await _ride_out_failover(make_stack, sentinels.url, sentinels.master.kill, caplog)
    assert sentinels.current_master() == sentinels.replica.port
    with capsys.disabled():
        print(f"\nsentinel failover: {summary}")


# --- TLS and the ACL user on a cluster -----------------------------------------------------

ACL_FILE = Path(__file__).resolve().parent.parent / "deploy" / "redis" / "users.acl"
PASSWORD = "sidecar-ha-password"


@dataclass
class TlsServers:
    ports: list[int]
    certs: dict[str, Path]

    @property
    def env(self) -> dict[str, str]:
        return {"REDIS_TLS_CA_FILE": str(self.certs["ca"].with_suffix(".crt")),
                "REDIS_TLS_CERT_FILE": str(self.certs["client"].with_suffix(".crt")),
                "REDIS_TLS_KEY_FILE": str(self.certs["client"].with_suffix(".key"))}

    @property
    def url(self) -> str:
        return f"rediss+cluster://sidecar:{PASSWORD}@127.0.0.1:{self.ports[0]}"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, ssl=True, socket_timeout=5,
                           ssl_ca_certs=self.env["REDIS_TLS_CA_FILE"],
                           ssl_certfile=self.env["REDIS_TLS_CERT_FILE"],
                           ssl_keyfile=self.env["REDIS_TLS_KEY_FILE"])


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServers]:
    """Three TLS-only masters (bus and clients), the deploy ACL user for the sidecar; the
    default user stays on for `redis-cli --cluster create`."""
    root = tmp_path_factory.mktemp("tls-cluster")
    certs = make_certs(root)
    acl = root / "users.acl"
    acl.write_text(ACL_FILE.read_text().replace("<password>", PASSWORD).replace(
        "user default off", "user default on nopass ~* &* +@all"))
    group = TlsServers([_ha_port() for _ in range(3)], certs)
    tls = ["--tls-cert-file", str(certs["server"].with_suffix(".crt")),
           "--tls-key-file", str(certs["server"].with_suffix(".key")),
           "--tls-client-cert-file", str(certs["client"].with_suffix(".crt")),
           "--tls-client-key-file", str(certs["client"].with_suffix(".key")),
           "--tls-ca-cert-file", str(certs["ca"].with_suffix(".crt"))]
    procs = []
    try:
        for port in group.ports:
            workdir = root / str(port)
            workdir.mkdir()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(workdir),
                 "--cluster-enabled", "yes", "--tls-cluster", "yes", "--tls-replication", "yes",
                 "--tls-auth-clients", "yes", "--aclfile", str(acl), *tls],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        for port in group.ports:
            _poll(lambda port=port: group.client(port).ping(), "TLS cluster node up")
        subprocess.run(["redis-cli", "--tls", "--cacert", tls[-1], "--cert", tls[5],
                        "--key", tls[7], "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in group.ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        _poll(lambda: all(group.client(p).execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER INFO")["cluster_state"] == "ok" for p in group.ports), "TLS cluster formed")
        yield group
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_tls_cluster_with_the_acl_user(
    make_stack: StackFactory, tls_cluster: TlsServers
) -> None:
    stack = await make_stack(tls_cluster.env, redis_url=tls_cluster.url)
    await _subscribed(stack)
    paths = [f"/api/v1/patients/{n}" for n in range(300, 310)]
    assert [(await stack.proxy.get(p)).x_cache for p in paths] == ["MISS"] * len(paths)
    await stack.rt.flights.idle()
    assert [(await stack.proxy.get(p)).x_cache for p in paths] == ["HIT"] * len(paths)
    written = await stack.proxy.request("PATCH", paths[0], headers=JSON, data=b'{"gender": "x"}')
    assert written.status == 200
    assert (await stack.proxy.get(paths[0])).x_cache == "MISS"
    purge = await stack.admin.request("DELETE", "/cache?prefix=identity:patient&confirm=yes",
                                      token=None)
    assert purge.status == 200 and purge.json()["removed"] == len(paths)
    errors = [line for line in (await stack.admin.get("/metrics", token=None))
              .body.decode().splitlines() if line.startswith("cache_errors_total")]
    assert errors == []
    assert (await _readyz(stack))["cache"] == "redis-cluster"


@pytest.fixture(scope="module")
def tls_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServers]:
    """A TLS-only master (the deploy ACL user) and one TLS-only Sentinel watching it.

    `ports` is [Sentinel, master]; the same certificates and client files as the cluster's.
    """
    root = tmp_path_factory.mktemp("tls-sentinel")
    certs = make_certs(root)
    acl = root / "users.acl"
    acl.write_text(ACL_FILE.read_text().replace("<password>", PASSWORD).replace(
        "user default off", "user default on nopass ~* &* +@all"))
    group = TlsServers([_ha_port(), _ha_port()], certs)
    files = {"tls-cert-file": certs["server"].with_suffix(".crt"),
             "tls-key-file": certs["server"].with_suffix(".key"),
             "tls-client-cert-file": certs["client"].with_suffix(".crt"),
             "tls-client-key-file": certs["client"].with_suffix(".key"),
             "tls-ca-cert-file": certs["ca"].with_suffix(".crt")}
    tls = "".join(f"{name} {path}\n" for name, path in files.items())
    sentinel_port, master_port = group.ports
    (root / "master.conf").write_text(
        f"port 0\ntls-port {master_port}\nbind 127.0.0.1\nsave \"\"\ndir {root}\n"
        f"tls-auth-clients yes\naclfile {acl}\n{tls}")
    (root / "sentinel.conf").write_text(
        f"port 0\ntls-port {sentinel_port}\nbind 127.0.0.1\ndir {root}\ntls-replication yes\n"
        f"tls-auth-clients yes\n{tls}sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n")
    procs = [subprocess.Popen(["redis-server", str(root / "master.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT),
             subprocess.Popen(["redis-server", str(root / "sentinel.conf"), "--sentinel"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)]
    try:
        _poll(lambda: group.client(master_port).ping(), "TLS master up")
        _poll(lambda: int(group.client(sentinel_port).execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1]) == master_port,
              "TLS Sentinel watching the master")
        yield group
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_tls_sentinel_with_the_acl_user(
    make_stack: StackFactory, tls_sentinel: TlsServers
) -> None:
    url = (f"rediss+sentinel://sidecar:{PASSWORD}@127.0.0.1:{tls_sentinel.ports[0]}"
           f"/{SERVICE}/0")
    stack = await make_stack(tls_sentinel.env, redis_url=url)
    await _subscribed(stack)
    path = "/api/v1/patients/77"
    assert (await stack.proxy.get(path)).x_cache == "MISS"
    await stack.rt.flights.idle()
    assert (await stack.proxy.get(path)).x_cache == "HIT"
    purge = await stack.admin.request("DELETE", "/cache/identity:patient:77", token=None)
    assert purge.status == 200 and purge.json()["removed"] == 1
    errors = [line for line in (await stack.admin.get("/metrics", token=None))
              .body.decode().splitlines() if line.startswith("cache_errors_total")]
    assert errors == []
    assert (await _readyz(stack))["cache"] == "redis-sentinel"
