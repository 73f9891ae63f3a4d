"""`make bench`: bare aiohttp, nginx proxy_cache and the sidecar, measured in one run.

Every server under test (and its Redis) is pinned to CPU 0, wrk and the stub upstreams to
CPU 1; scenarios are interleaved over several rounds, and each run records how much CPU
processes outside the bench used, so a noisy round shows. Figures are medians over rounds;
compare ratios within one run, not numbers between machines.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.measure import (
    Run,
    machine_busy,
    median_run,
    other_cpu,
    parse_wrk,
    process_cpu,
    ratio,
)

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU, LOAD_CPU = "0", "1"
AUTH = "Bearer bench"
BODY_BYTES = "1500"  # the stub pads patient bodies to ~1.5 KB (a test hook header)
HOT_KEYS = 2001
CYCLE_LUA = f"""local i = 0
request = function()
  i = (i % {HOT_KEYS}) + 1
  return wrk.format("GET", "/api/v1/patients/" .. i)
end
"""
# A fresh id per request (a miss every time); the base differs per run so rounds never repeat.
FRESH_LUA = """local next_id = 0
function init(args) next_id = tonumber(args[1]) end
request = function()
  next_id = next_id + 1
  return wrk.format("GET", "/api/v1/patients/" .. string.format("%d", next_id))
end
"""
NGINX_CONF = """user root;
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  proxy_cache_path {tmp}/nginx-cache levels=1:2 keys_zone=identity:16m inactive=60m;
  upstream stub {{ server 127.0.0.1:{upstream}; keepalive 32; }}
  # Like the sidecar's rules: one copy per credential, patient and professional 600 s,
  # dashboard 300 s; everything else passes through.
  proxy_cache_key $request_uri$http_authorization;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  server {{
    listen 127.0.0.1:{port};
    location ~ ^/api/v1/(patients|professionals)/[0-9]+$ {{
      proxy_cache identity; proxy_cache_valid 200 600s; proxy_pass http://stub;
    }}
    location = /api/v1/statistics/dashboard {{
      proxy_cache identity; proxy_cache_valid 200 300s; proxy_pass http://stub;
    }}
    location / {{ proxy_pass http://stub; }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's SIDECAR_/CACHE_/... variables would silently change the setup."""
    prefixes = ("SIDECAR_", "CACHE_", "REDIS_", "UPSTREAM_", "STUB_", "OTEL_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)} | extra


def ensure_tools() -> None:
    missing = [tool for tool in ("wrk", "nginx", "redis-server") if shutil.which(tool) is None]
    if missing:
        print(f"# installing {' '.join(missing)}", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    cpu_pids: list[int] = field(default_factory=list)  # whose CPU counts as the server's


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.base_id = 10_000_000

    def spawn(self, name: str, cpu: str, cmd: list[str], env: dict[str, str],
              ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["taskset", "-c", cpu, *cmd], env=env, cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc, log

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def all_pids(self) -> list[int]:
        pids = [p.pid for p in self.procs if p.poll() is None]
        for pid in list(pids):  # nginx workers are children of the master
            children = Path(f"/proc/{pid}/task/{pid}/children")
            if children.exists():
                pids += [int(c) for c in children.read_text().split()]
        return pids


def http_get(port: int, path: str) -> tuple[int, dict[str, str]]:
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=5)) as conn:
        conn.request("GET", path, headers={"Authorization": AUTH, "X-Stub-Body-Bytes": BODY_BYTES})
        resp = conn.getresponse()
        resp.read()
        return resp.status, dict(resp.getheaders())


def wait_ready(port: int, path: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if http_get(port, path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"not ready after 30 s:\n{log.read_text()[-3000:]}")


def start_redis(bench: Bench, name: str) -> tuple[int, subprocess.Popen[bytes], Path]:
    port = free_port()
    proc, log = bench.spawn(name, SERVER_CPU, [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no"], clean_env())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    return port, proc, log


def start(bench: Bench) -> dict[str, Server]:
    py = sys.executable
    servers: dict[str, Server] = {}
    rport, redis, rlog = start_redis(bench, "redis")
    # The miss row's own Redis: every sidecar on a Redis hears its lease and fill messages,
    # and five idle ones woken on CPU 0 by each store delayed the miss under test (replicas
    # run on other nodes in a deployment).
    mport, mredis, mlog = start_redis(bench, "redis-miss")
    patient = "/api/v1/patients/1"
    for name, delay in (("stub-fast", "0"), ("stub-slow", "10")):
        port = free_port()
        proc, log = bench.spawn(name, LOAD_CPU, [py, "-m", "upstream_stub"], clean_env(
            STUB_PORT=str(port), STUB_PG_DELAY_MS=delay, STUB_FHIR_DELAY_MS=delay))
        wait_ready(port, patient, proc, log)
        servers[name] = Server(name, port, proc, log, [proc.pid])
    port = free_port()
    proc, log = bench.spawn("hello", SERVER_CPU, [py, "-m", "bench.hello", str(port)],
                            clean_env())
    wait_ready(port, patient, proc, log)
    servers["hello"] = Server("hello", port, proc, log, [proc.pid])
    port = free_port()
    proc, log = bench.spawn("hello-uvloop", SERVER_CPU,
                            [py, "-m", "bench.hello", str(port), "uvloop"], clean_env())
    wait_ready(port, patient, proc, log)
    servers["hello-uvloop"] = Server("hello-uvloop", port, proc, log, [proc.pid])
    port = free_port()
    conf = bench.tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=bench.tmp, port=port,
                                      upstream=servers["stub-fast"].port))
    proc, log = bench.spawn("nginx", SERVER_CPU, ["nginx", "-c", str(conf), "-p",
                                                  str(bench.tmp)], clean_env())
    wait_ready(port, patient, proc, log)
    servers["nginx"] = Server("nginx", port, proc, log)
    redis_url = f"redis://127.0.0.1:{rport}/0"
    sidecars = {  # shipped defaults (access log on) except what each scenario is about
        "sidecar-memory": ("stub-fast", {"REDIS_URL": "memory://"}),
        "sidecar-memory-asyncio": ("stub-fast", {"REDIS_URL": "memory://",
                                                 "SIDECAR_EVENT_LOOP": "asyncio"}),
        "sidecar-near": ("stub-fast", {"REDIS_URL": redis_url}),
        "sidecar-redis": ("stub-fast", {"REDIS_URL": redis_url, "CACHE_NEAR_MAX_BYTES": "0"}),
        "sidecar-miss": ("stub-slow", {"REDIS_URL": f"redis://127.0.0.1:{mport}/0"}),
        "sidecar-off": ("stub-slow", {"REDIS_URL": redis_url, "CACHE_ENABLED": "false"}),
        "sidecar-near-2w": ("stub-fast", {"REDIS_URL": redis_url, "SIDECAR_WORKERS": "2"}),
    }
    for name, (upstream, env) in sidecars.items():
        port, admin = free_port(), free_port()
        # Two workers get both cores (wrk shares one with them): the scaling row.
        cpus = "0,1" if name.endswith("-2w") else SERVER_CPU
        proc, log = bench.spawn(name, cpus, [py, "-m", "sidecar"], clean_env(
            UPSTREAM_URL=f"http://127.0.0.1:{servers[upstream].port}",
            SIDECAR_PORT=str(port), SIDECAR_ADMIN_PORT=str(admin),
            SIDECAR_ADMIN_HOST="127.0.0.1", CACHE_KEY_SECRET="bench", **env))  # noqa: S106
        wait_ready(port, patient, proc, log)
        servers[name] = Server(name, port, proc, log, [proc.pid])
    servers["redis"] = Server("redis", rport, redis, rlog, [redis.pid])
    servers["redis-miss"] = Server("redis-miss", mport, mredis, mlog, [mredis.pid])
    # nginx: the worker does the work; the master only supervises.
    master = servers["nginx"].proc.pid
    kids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    servers["nginx"].cpu_pids = [int(k) for k in kids] or [master]
    supervisor = servers["sidecar-near-2w"].proc.pid
    workers = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    servers["sidecar-near-2w"].cpu_pids = [supervisor, *(int(w) for w in workers)]
    return servers


def wrk(bench: Bench, port: int, conns: int, seconds: int, script: Path,
        cpu_pids: list[int], *args: str) -> Run:
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s",
           "--latency", "-H", f"Authorization: {AUTH}", "-H", f"X-Stub-Body-Bytes: {BODY_BYTES}",
           "-s", str(script), f"http://127.0.0.1:{port}/", *(["--", *args] if args else [])]
    pids = bench.all_pids()
    before = {p: process_cpu(p) for p in pids}
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    machine0, started = machine_busy(), time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    elapsed, machine1 = time.monotonic() - started, machine_busy()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    used = {p: process_cpu(p) - before[p] for p in pids if Path(f"/proc/{p}").exists()}
    ours = sum(used.values()) + (children1.ru_utime + children1.ru_stime
                                 - children0.ru_utime - children0.ru_stime) + (
        self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime)
    rps, p50, p99, requests, errors = parse_wrk(done.stdout)
    server_cpu = sum(used.get(p, 0.0) for p in cpu_pids)
    return Run(rps, p50, p99, requests, errors,
               1e6 * server_cpu / requests if requests else 0.0,
               other_cpu(machine1 - machine0, ours, elapsed))


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str
    conns: int
    script: str  # "cycle" (2,001 warm keys) or "fresh" (a new id per request)


TWO_WORKERS = "sidecar Redis hit, near tier, SIDECAR_WORKERS=2 on both cores"
ASYNCIO_HIT = "sidecar memory:// hit, SIDECAR_EVENT_LOOP=asyncio"
SCENARIOS = [
    Scenario("bare aiohttp hello", "hello", 64, "cycle"),
    Scenario("bare aiohttp hello on uvloop", "hello-uvloop", 64, "cycle"),
    Scenario("nginx proxy_cache hit", "nginx", 64, "cycle"),
    Scenario("sidecar memory:// hit", "sidecar-memory", 64, "cycle"),
    Scenario(ASYNCIO_HIT, "sidecar-memory-asyncio", 64, "cycle"),
    Scenario("sidecar Redis hit, near tier", "sidecar-near", 64, "cycle"),
    Scenario("sidecar Redis hit, no near tier", "sidecar-redis", 64, "cycle"),
    Scenario(TWO_WORKERS, "sidecar-near-2w", 64, "cycle"),
    Scenario("bare aiohttp hello", "hello", 1, "cycle"),
    Scenario("nginx proxy_cache hit", "nginx", 1, "cycle"),
    Scenario("sidecar memory:// hit", "sidecar-memory", 1, "cycle"),
    Scenario("sidecar Redis hit, near tier", "sidecar-near", 1, "cycle"),
    Scenario("sidecar Redis hit, no near tier", "sidecar-redis", 1, "cycle"),
    Scenario("direct to a 20 ms upstream", "stub-slow", 1, "fresh"),
    Scenario("sidecar miss over it (Redis)", "sidecar-miss", 1, "fresh"),
    Scenario("sidecar pass-through (cache off)", "sidecar-off", 1, "fresh"),
]


def profile(bench: Bench, servers: dict[str, Server], scripts: dict[str, Path],
            seconds: int) -> list[str]:
    """py-spy on the memory and Redis hit paths: the top inclusive frames."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    lines: list[str] = []
    for name in ("sidecar-memory", "sidecar-redis"):
        raw = bench.tmp / f"{name}.raw"
        rec = subprocess.Popen([str(spy), "record", "-p", str(servers[name].proc.pid), "-d",
                                str(seconds), "-r", "250", "-f", "raw", "-o", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)  # py-spy attaches before the load starts
        wrk(bench, servers[name].port, 64, seconds - 2, scripts["cycle"], [])
        rec.wait(timeout=60)
        lines += [f"### {name}, wrk -c64 ({'py-spy, % of samples, inclusive'})", "",
                  "| share | function |", "|---:|---|",
                  *[f"| {share:.1f}% | `{frame}` |" for frame, share in top_frames(raw)], ""]
    return lines


def top_frames(raw: Path, count: int = 22) -> list[tuple[str, float]]:
    total, inclusive = 0, Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        samples = int(n)
        total += samples
        seen: set[str] = set()
        for frame in stack.split(";"):
            name = frame.split(" (")[0] + " " + frame.split("/")[-1].split(":")[0] \
                if "(" in frame else frame
            if name not in seen:
                inclusive[name] += samples
                seen.add(name)
    skip = ("run", "_run", "main", "<module>", "Runner", "BaseEventLoop", "Handle._run",
            "_run_module", "_run_code")
    return [(k, 100 * v / total) for k, v in inclusive.most_common(count + 12)
            if not k.startswith(skip)][:count] if total else []


def rss_mib(pids: list[int]) -> float:
    """Resident memory of these processes now (VmRSS), in MiB."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def report(results: dict[tuple[str, int], Run], rounds: int, args: argparse.Namespace,
           extra: list[str], rss: dict[str, float]) -> str:
    def row(s: Scenario) -> str:
        r = results[(s.name, s.conns)]
        hello = results[("bare aiohttp hello", s.conns)]
        nginx = results[("nginx proxy_cache hit", s.conns)]
        cells = [ratio(r.rps, hello.rps), ratio(r.rps, nginx.rps)] if s.conns > 1 else [
            ratio(r.p50, hello.p50), ratio(r.p50, nginx.p50)]
        shown = " | ".join("-" if c is None else f"{c:.2f}" for c in cells)
        return (f"| {s.name} | c{s.conns} | {r.rps:,.0f} | {r.p50:.3f} | {r.p99:.3f} | "
                f"{r.cpu_us_per_request:.0f} | {shown} | {r.errors} | {r.other_cpu:.0f}% |")

    def get(name: str, conns: int) -> Run:
        return results[(name, conns)]

    direct = get("direct to a 20 ms upstream", 1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip() or "unknown"
    near64, redis64 = get("sidecar Redis hit, near tier", 64), get(
        "sidecar Redis hit, no near tier", 64)
    derived = [
        f"- miss adds **{get('sidecar miss over it (Redis)', 1).p50 - direct.p50:.2f} ms** p50 "
        "over calling the upstream directly (c1)",
        f"- pass-through adds **{get('sidecar pass-through (cache off)', 1).p50 - direct.p50:.2f}"
        " ms** p50 (c1)",
        f"- Redis-only hit p99/p50 at c64: **{redis64.p99 / redis64.p50:.1f}**; near-tier hit: "
        f"**{near64.p99 / near64.p50:.1f}**",
        f"- near-tier hits, 2 workers / 1 worker (c64 req/s): **"
        f"{get(TWO_WORKERS, 64).rps / near64.rps:.2f}** (wrk shares CPU 1 with the second)",
        f"- memory hit against bare aiohttp on the same loop (uvloop, c64 req/s): **"
        f"{get('sidecar memory:// hit', 64).rps / get('bare aiohttp hello on uvloop', 64).rps:.2f}"
        f"**; uvloop / asyncio for the sidecar: **"
        f"{get('sidecar memory:// hit', 64).rps / get(ASYNCIO_HIT, 64).rps:.2f}**",
        f"- memory hit p50 at c1 / bare aiohttp p50: **"
        f"{get('sidecar memory:// hit', 1).p50 / get('bare aiohttp hello', 1).p50:.2f}**",
        f"- RSS after the runs, {HOT_KEYS:,} hot keys: near tier on **"
        f"{rss['sidecar-near']:.0f} MiB**, `memory://` {rss['sidecar-memory']:.0f} MiB, "
        f"Redis only {rss['sidecar-redis']:.0f} MiB",
    ]
    return "\n".join([
        "# Sidecar benchmark", "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}, commit `{commit}`",
        f"- Machine: nproc={os.cpu_count()}, {platform.machine()}, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
        f"- {rounds} interleaved rounds; c64 runs {args.seconds} s, c1 runs {args.c1_seconds} s; "
        f"medians over rounds. Servers under test and Redis on CPU {SERVER_CPU}, wrk "
        f"(`-t1`) and the stub upstreams on CPU {LOAD_CPU}.",
        f"- c64 runs cycle over {HOT_KEYS:,} warm keys with ~1.5 KB JSON bodies; `fresh` runs "
        "ask a new patient id per request. Shipped defaults (access log on).",
        "- Ratios: c64 rows compare req/s; c1 rows compare p50 (lower is better).", "",
        "| scenario | conns | req/s | p50 ms | p99 ms | CPU µs/req | x bare aiohttp | x nginx "
        "| errors | other CPU (max) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[row(s) for s in SCENARIOS], "",
        "`other CPU`: % of one core used by processes outside the bench during the noisiest "
        "round of that row; above ~10 % the row is skewed.", "",
        "## Derived (same run)", "", *derived, "", *extra,
        "Reproduce: `make bench` (`.venv/bin/python -m bench.run --help` for options).", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per c64 run")
    parser.add_argument("--c1-seconds", type=int, default=4, help="per c1 run")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s runs")
    parser.add_argument("--profile", action="store_true", help="add py-spy tables")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.c1_seconds = 1, 2, 2
    ensure_tools()
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-", ignore_cleanup_errors=True) as tmp:
        bench = Bench(Path(tmp))
        scripts = {"cycle": Path(tmp) / "cycle.lua", "fresh": Path(tmp) / "fresh.lua"}
        scripts["cycle"].write_text(CYCLE_LUA)
        scripts["fresh"].write_text(FRESH_LUA)
        try:
            servers = start(bench)
            for name in ("nginx", "sidecar-memory", "sidecar-near", "sidecar-redis",
                         "sidecar-near-2w"):
                wrk(bench, servers[name].port, 64, 3, scripts["cycle"], [])  # warm 2,001 keys
                status, headers = http_get(servers[name].port, "/api/v1/patients/7")
                print(f"# warmed {name}: {status} {headers.get('X-Cache', '')}"
                      f"{headers.get('X-Cache-Status', '')}", file=sys.stderr)
            runs: dict[tuple[str, int], list[Run]] = {}
            for round_no in range(args.rounds):
                for s in SCENARIOS:
                    seconds = args.seconds if s.conns > 1 else args.c1_seconds
                    extra: list[str] = []
                    if s.script == "fresh":
                        bench.base_id += 10_000_000
                        extra = [str(bench.base_id)]
                    run = wrk(bench, servers[s.server].port, s.conns, seconds,
                              scripts[s.script], servers[s.server].cpu_pids, *extra)
                    runs.setdefault((s.name, s.conns), []).append(run)
                    print(f"# round {round_no + 1} {s.name} c{s.conns}: {run.rps:,.0f} req/s "
                          f"p50 {run.p50:.3f} ms, other {run.other_cpu:.0f}%", file=sys.stderr)
            rss = {name: rss_mib(servers[name].cpu_pids) for name in (
                "sidecar-memory", "sidecar-near", "sidecar-redis")}
            lines = profile(bench, servers, scripts, 8) if args.profile else []
            if lines:
                lines = ["## Where the CPU goes (py-spy, this run)", "", *lines]
            from bench.revalidation import measure  # it builds on this module's helpers
            lines = measure(bench, f"redis://127.0.0.1:{servers['redis'].port}/0") + lines
            text = report({k: median_run(v) for k, v in runs.items()}, args.rounds, args,
                          lines, rss)
        finally:
            bench.stop_all()
    print(text)
    previous = args.out.read_text() if args.out.exists() else ""
    notes = previous.partition("<!-- notes -->")[2]
    args.out.write_text(text + ("<!-- notes -->" + notes if notes else ""))


if __name__ == "__main__":
    main()
