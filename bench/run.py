"""Benchmark the sidecar against the stub it fronts, with real processes and wrk.

Real subprocesses (redis-server, stub, sidecar) on free ports, so the numbers include the
sockets, event loops and Redis round trips a deployment pays; in-process tests would not.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH = "/api/v1/patients/42"
AUTH = "Bearer bench"
STUB_DELAYS = {"STUB_PG_DELAY_MS": "2", "STUB_FHIR_DELAY_MS": "8"}
# Each wrk thread gets its own Lua state; setup() hands each a disjoint id range so no id
# repeats (1e8 ids per thread, far more than one run sends) and none overlaps id 42.
MISS_LUA = """local threads = 0
function setup(t) t:set("next_id", 1000000 + threads * 100000000); threads = threads + 1 end
function request()
  next_id = next_id + 1
  return wrk.format("GET", "/api/v1/patients/" .. string.format("%d", next_id - 1))
end
"""
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_COUNTERS = ("cache_hits_total", "cache_misses_total", "cache_bypass_total")


@dataclass(frozen=True)
class Result:
    name: str
    rps: float
    p50: float  # milliseconds
    p90: float
    p99: float
    requests: int
    non2xx: int
    socket_errors: int
    stub_cpu: float = 0.0  # % of one core over the run
    sidecar_cpu: float | None = None
    other_cpu: float = 0.0  # whole machine minus this bench's processes and wrk
    hits: int | None = None  # sidecar counter deltas over the run, None for `direct`
    misses: int | None = None
    bypass: int | None = None


def free_port() -> int:
    """Port 0 lets the kernel pick, so parallel runs and a local `make run` never collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's SIDECAR_/CACHE_/REDIS_/... variables would silently change the setup."""
    prefixes = ("SIDECAR_", "CACHE_", "REDIS_", "UPSTREAM_", "STUB_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return env | extra


PROCS: list[subprocess.Popen[bytes]] = []  # everything spawned, stopped in `finally`


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    PROCS.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # a no-op once the process has been reaped
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=5)) as conn:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path,
               what: str) -> None:
    """Poll until `ready()` is true; fail fast with the log tail if the process died."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{what} not ready after 20s:\n{log.read_text()[-2000:]}")


def redis_pong(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def metric_totals(admin_port: int) -> dict[str, int]:
    """Sum each cache counter over its labels, from the admin port's Prometheus text."""
    _, _, body = get(admin_port, "/metrics", {})
    totals = dict.fromkeys(_COUNTERS, 0)
    for line in body.decode().splitlines():
        m = re.match(r"(\w+)(?:\{.*\})? (\S+)$", line)
        if m and m[1] in totals:
            totals[m[1]] += int(float(m[2]))
    return totals


def parse_wrk(name: str, out: str) -> Result:
    """wrk prints durations as e.g. 812.00us, 1.23ms, 1.02s or 1.50m."""
    found = re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)$", out, re.M)
    pct = {int(p): float(v) * _UNITS[unit] for p, v, unit in found}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or total is None or len(pct) != 3:
        raise ValueError(f"unexpected wrk output for {name}:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Result(name, float(rps[1]), pct[50], pct[90], pct[99], int(total[1]),
                  int(non2xx[1]) if non2xx else 0,
                  sum(int(g) for g in errs.groups()) if errs else 0)


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process: shows which one saturates the shared cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_seconds() -> float:
    """User+nice+system CPU of the whole machine, to spot load from outside this bench."""
    cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return sum(int(x) for x in cpu[1:4]) / os.sysconf("SC_CLK_TCK")


def wrk(args: argparse.Namespace, name: str, url: str, *extra: str, stub: int, redis: int,
        sidecar: tuple[int, int] | None = None) -> Result:
    """One wrk run; `sidecar` (pid, admin port) adds its CPU and cache counter deltas."""
    cmd = ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
           "-H", f"Authorization: {AUTH}", *extra, url]
    print(f"# {name}: {' '.join(cmd)}", file=sys.stderr)
    pids = [stub, redis, os.getpid()] + ([sidecar[0]] if sidecar else [])
    cpu0, m0 = [cpu_seconds(p) for p in pids], metric_totals(sidecar[1]) if sidecar else {}
    started, machine0, wrk0 = time.monotonic(), machine_seconds(), os.times()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    elapsed, wrk1 = time.monotonic() - started, os.times()
    used = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
    used.append(wrk1.children_user + wrk1.children_system - wrk0.children_user
                - wrk0.children_system)  # wrk: the only child reaped during the run
    other = 100 * (machine_seconds() - machine0 - sum(used)) / elapsed
    result = replace(parse_wrk(name, done.stdout), stub_cpu=100 * used[0] / elapsed,
                     other_cpu=max(other, 0.0))
    if not sidecar:
        return result
    d = {k: v - m0[k] for k, v in metric_totals(sidecar[1]).items()}
    return replace(result, sidecar_cpu=100 * used[3] / elapsed, hits=d["cache_hits_total"],
                   misses=d["cache_misses_total"], bypass=d["cache_bypass_total"])


def report(results: list[Result], args: argparse.Namespace, notes: list[str]) -> str:
    by = {r.name: r for r in results}
    direct = by["direct"]

    def cell(v: float | None, fmt: str = "d") -> str:
        return "-" if v is None else format(v, fmt) + ("%" if fmt == ".0f" else "")

    rows = [f"| {r.name} | {r.rps:,.0f} | {r.p50:.2f} | {r.p90:.2f} | {r.p99:.2f} | "
            f"{r.requests} | {r.non2xx} | {r.socket_errors} | {r.stub_cpu:.0f}% | "
            f"{cell(r.sidecar_cpu, '.0f')} | {r.other_cpu:.0f}% | {cell(r.hits)} | "
            f"{cell(r.misses)} | {cell(r.bypass)} |" for r in results]
    ratios = [
        ("hit p50 / direct p50", by["sidecar-hit"].p50 / direct.p50),
        ("hit req/s / direct req/s", by["sidecar-hit"].rps / direct.rps),
        ("miss p50 / direct p50", by["sidecar-miss"].p50 / direct.p50),
        ("bypass p50 / direct p50", by["sidecar-bypass"].p50 / direct.p50),
        ("hit (memory) p50 / direct p50", by["sidecar-hit-memory"].p50 / direct.p50),
        ("hit (memory) req/s / direct req/s", by["sidecar-hit-memory"].rps / direct.rps),
    ]
    return "\n".join([
        "# Sidecar benchmark", "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        f"- Machine: nproc={len(os.sched_getaffinity(0))}, {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- wrk: `-t2 -c{args.connections} -d{args.duration}s --latency`, "
        f"`Authorization: {AUTH}`",
        f"- Stub delays: PostgreSQL {STUB_DELAYS['STUB_PG_DELAY_MS']} ms, "
        f"FHIR {STUB_DELAYS['STUB_FHIR_DELAY_MS']} ms (a patient GET pays both)",
        *[f"- {n}" for n in notes],
        "- **wrk, the stub, redis-server and the sidecar share these cores on one machine**: "
        "absolute numbers are contended and only the ratios within this run compare.", "",
        "| scenario | req/s | p50 ms | p90 ms | p99 ms | requests | non-2xx | socket errors "
        "| stub CPU | sidecar CPU | other CPU | Δhits | Δmisses | Δbypass |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
        "CPU: % of one core used during the run (100% = that event loop is saturated); "
        "`other` is load from outside this bench (a few % of kernel noise is normal; more "
        "means the row is skewed). Δhits/Δmisses/Δbypass: change of the sidecar's "
        "`cache_*_total` counters over the run.",
        "", "## Ratios (same run)", "",
        *[f"- {label}: **{value:.2f}**" for label, value in ratios], "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/results.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        logs, lua = Path(tmp), Path(tmp) / "miss.lua"
        lua.write_text(MISS_LUA)
        try:
            rport, sport = free_port(), free_port()
            redis = spawn(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no"], clean_env(), logs / "redis.log")
            wait_until(lambda: redis_pong(rport), redis, logs / "redis.log", "redis-server")
            stub = spawn([sys.executable, "-m", "upstream_stub"],
                         clean_env(STUB_PORT=str(sport), STUB_TEST_HOOKS="false", **STUB_DELAYS),
                         logs / "stub.log")
            auth = {"Authorization": AUTH}
            wait_until(lambda: get(sport, PATH, auth)[0] == 200, stub, logs / "stub.log", "stub")

            def start_sidecar(redis_url: str) -> tuple[subprocess.Popen[bytes], int, int]:
                port, admin = free_port(), free_port()
                log = logs / f"sidecar-{redis_url.split(':')[0]}.log"
                proc = spawn([sys.executable, "-m", "sidecar"], clean_env(
                    UPSTREAM_URL=f"http://127.0.0.1:{sport}", REDIS_URL=redis_url,
                    SIDECAR_PORT=str(port), SIDECAR_ADMIN_PORT=str(admin),
                    SIDECAR_ACCESS_LOG_SAMPLE="0", SIDECAR_LOG_LEVEL="WARNING",
                    CACHE_KEY_SECRET="bench"), log)  # noqa: S106 (throwaway cache)
                wait_until(lambda: get(admin, "/readyz", {})[0] == 200, proc, log, "sidecar")
                first = get(port, PATH, auth)[0]  # prime, then check the copy is served
                second, headers, _ = get(port, PATH, auth)
                if (first, second, headers.get("X-Cache")) != (200, 200, "HIT"):
                    sys.exit(f"priming failed: {first}/{second} headers={headers}")
                return proc, port, admin

            bench = partial(wrk, args, stub=stub.pid, redis=redis.pid)
            results = [bench("direct", f"http://127.0.0.1:{sport}{PATH}")]
            sidecar, port, admin = start_sidecar(f"redis://127.0.0.1:{rport}/0")
            ready = json.loads(get(admin, "/readyz", {})[2])
            notes = [f"Sidecar readiness: cache={ready.get('cache')}, "
                     f"breaker={ready.get('breaker')}"]
            url = f"http://127.0.0.1:{port}"
            run = partial(bench, sidecar=(sidecar.pid, admin))
            results += [
                run("sidecar-hit", url + PATH),
                run("sidecar-miss", url + "/", "-s", str(lua)),
                run("sidecar-bypass", url + PATH, "-H", "Cache-Control: no-store"),
            ]
            stop(sidecar)
            sidecar, port, admin = start_sidecar("memory://")
            results.append(bench("sidecar-hit-memory", f"http://127.0.0.1:{port}{PATH}",
                                 sidecar=(sidecar.pid, admin)))
        finally:
            for proc in reversed(PROCS):
                stop(proc)
    text = report(results, args, notes)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
