"""Cache hits (`memory://`) with SIDECAR_WORKERS=1 and 2: does a second worker double them?

`python -m bench.workers [--rounds 3] [--duration 10]`: the stub and the sidecar on free
ports, a warm-up run (each worker caches its own copy), then `wrk -t1 -c64` per round, the
worker counts alternating so drifting load from outside hits both alike. `other CPU` is the
machine's CPU not used by this bench's processes or wrk (another engineer's tests): rounds
where it is high are skewed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import (
    AUTH,
    PATH,
    clean_env,
    cpu_seconds,
    free_port,
    get,
    machine_seconds,
    metric_totals,
    parse_wrk,
    spawn,
    stop,
    wait_until,
)


def sidecar_pids(pid: int, admin: int, workers: int) -> list[int]:
    if workers == 1:
        return [pid]
    _, _, body = get(admin, "/healthz", {})
    return [pid] + [w["pid"] for w in json.loads(body)["workers"]]


def one_round(workers: int, args: argparse.Namespace, logs: Path, stub_pid: int,
              stub_port: int) -> dict[str, float]:
    port, admin = free_port(), free_port()
    log = logs / f"sidecar-{workers}.log"
    proc = spawn([sys.executable, "-m", "sidecar"], clean_env(
        UPSTREAM_URL=f"http://127.0.0.1:{stub_port}", REDIS_URL="memory://",
        SIDECAR_HOST="127.0.0.1", SIDECAR_ADMIN_HOST="127.0.0.1", SIDECAR_PORT=str(port),
        SIDECAR_ADMIN_PORT=str(admin), SIDECAR_ACCESS_LOG_SAMPLE="0",
        SIDECAR_LOG_LEVEL="WARNING", SIDECAR_WORKERS=str(workers),
        CACHE_KEY_SECRET="bench"), log)  # noqa: S106 (throwaway cache)
    try:
        wait_until(lambda: get(admin, "/readyz", {})[0] == 200, proc, log, "sidecar")
        url = f"http://127.0.0.1:{port}{PATH}"
        base = ["wrk", "-t1", f"-c{args.connections}", "--latency", "-H",
                f"Authorization: {AUTH}"]
        subprocess.run([*base, "-d2s", url], capture_output=True, check=True)  # warm-up
        pids = [stub_pid, *sidecar_pids(proc.pid, admin, workers)]
        cpu0, hits0 = [cpu_seconds(p) for p in pids], metric_totals(admin)["cache_hits_total"]
        started, machine0, wrk0 = time.monotonic(), machine_seconds(), os.times()
        done = subprocess.run([*base, f"-d{args.duration}s", url], capture_output=True,
                              text=True, check=True)
        elapsed, wrk1 = time.monotonic() - started, os.times()
        used = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        wrk_cpu = (wrk1.children_user + wrk1.children_system - wrk0.children_user
                   - wrk0.children_system)
        other = machine_seconds() - machine0 - sum(used) - wrk_cpu
        result = parse_wrk(f"workers={workers}", done.stdout)
        hits = metric_totals(admin)["cache_hits_total"] - hits0
        return {"workers": workers, "rps": result.rps, "p50": result.p50, "p99": result.p99,
                "errors": result.non2xx + result.socket_errors, "hits": hits,
                "requests": result.requests, "sidecar_cpu": 100 * sum(used[1:]) / elapsed,
                "wrk_cpu": 100 * wrk_cpu / elapsed, "other_cpu": max(0.0, 100 * other / elapsed)}
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-workers-") as tmp:
        logs = Path(tmp)
        stub_port = free_port()
        stub = spawn([sys.executable, "-m", "upstream_stub"],
                     clean_env(STUB_PORT=str(stub_port), STUB_TEST_HOOKS="false"),
                     logs / "stub.log")
        try:
            wait_until(lambda: get(stub_port, PATH, {"Authorization": AUTH})[0] == 200, stub,
                       logs / "stub.log", "stub")
            rows = []
            for _ in range(args.rounds):
                for workers in (1, 2):
                    rows.append(one_round(workers, args, logs, stub.pid, stub_port))
                    print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            stop(stub)
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, memory:// hits, "
          f"nproc={len(os.sched_getaffinity(0))}\n")
    print("| round | workers | req/s | p50 ms | p99 ms | errors | Δhits | sidecar CPU | "
          "req/s per sidecar core | wrk CPU | other CPU |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(rows):
        print(f"| {i // 2 + 1} | {r['workers']} | {r['rps']:,.0f} | {r['p50']:.2f} | "
              f"{r['p99']:.2f} | {r['errors']:.0f} | {r['hits']:.0f} | "
              f"{r['sidecar_cpu']:.0f}% | {100 * r['rps'] / r['sidecar_cpu']:,.0f} | "
              f"{r['wrk_cpu']:.0f}% | {r['other_cpu']:.0f}% |")
    for i in range(0, len(rows) - 1, 2):
        print(f"- round {i // 2 + 1}: 2 workers / 1 worker = "
              f"**{rows[i + 1]['rps'] / rows[i]['rps']:.2f}**")


if __name__ == "__main__":
    main()
