"""`make bench-workload`: a seeded clinical trace replayed through the sidecar, twice.

Once with today's per-credential variants, once with the rules' `share:` (patient and
dashboard) and a JWKS, against the stub (a few ms of PostgreSQL/FHIR delay per read) and
Redis. Reports hit ratio, upstream GETs saved, p50/p99 latency and the sidecar's CPU per
request, beside the hit ratio an ideal cache would get on the same trace (bench/trace.py).
The sidecar and Redis run on CPU 0; the stub, the JWKS server and this replay client on
CPU 1. By default the trace is sent in its own order at a clinic's pace (`--rate`), so the
ideal computed on that order is the one the replay can reach; `--rate 0` is a stress run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from bench.measure import process_cpu
from bench.run import LOAD_CPU, ROOT, SERVER_CPU, Bench, clean_env, free_port, wait_ready
from bench.trace import DASHBOARD, Shape, Step, generate, ideal

ISSUER, AUDIENCE = "https://idp.bench", "identity-api"
SHARE = "    share: {claims: {role: [clinician, admin]}}\n"
_UPSTREAM = re.compile(
    r'^sidecar_upstream_duration_seconds_count\{rule="(patient|stats-dashboard)"\} (\S+)$', re.M)


@dataclass
class Result:
    mode: str
    reads: int = 0
    hits: int = 0
    writes: int = 0
    errors: int = 0
    upstream_gets: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    latencies: list[float] | None = None
    dashboard_reads: int = 0
    dashboard_hits: int = 0

    def pct(self, q: float) -> float:
        values = sorted(self.latencies or [0.0])
        return values[min(len(values) - 1, int(q * len(values)))] * 1000


def shared_rules(text: str) -> str:
    """The shipped rules with `share:` on the patient and dashboard rules."""
    text = text.replace("    audit: true\n", "    audit: true\n" + SHARE, 1)
    marker = "    ttl_env: CACHE_TTL_STATS_DASHBOARD\n"
    assert marker in text
    return text.replace(marker, marker + SHARE, 1)


def mint(callers: int) -> tuple[dict[str, object], list[str]]:
    """A JWKS with one EC key and one token per caller (nine in ten clinicians)."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "bench-1", "use": "sig"}
    now = int(time.time())
    tokens = [jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": f"caller-{i}", "iat": now,
                          "exp": now + 3600, "role": "admin" if i % 10 == 0 else "clinician"},
                         key, algorithm="ES256", headers={"kid": "bench-1"})
              for i in range(callers)]
    return {"keys": [jwk]}, tokens


async def serve_jwks(doc: dict[str, object]) -> tuple[web.AppRunner, str]:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/jwks.json", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/jwks.json"


async def replay(port: int, steps: list[Step], tokens: list[str], concurrency: int,
                 result: Result, rate: float = 0.0) -> None:
    """`rate` > 0: open loop, the trace's own order at `rate` requests/s (a caller's next
    request waits for its previous answer); 0: closed loop, `concurrency` workers as fast as
    they go, each caller's requests in order (a stress run: the trace's order across callers
    is lost, writes overlap fills far more often than at any clinic's pace)."""
    base = f"http://127.0.0.1:{port}"
    latencies: list[float] = []
    result.latencies = latencies
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
            connector=connector, auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent")) as session:

        async def send(step: Step) -> None:
            headers = {"Authorization": f"Bearer {tokens[step.caller]}",
                       "X-Stub-Body-Bytes": "1500"}
            body = b'{"note": "edited"}' if step.method == "PATCH" else None
            if body is not None:
                headers["Content-Type"] = "application/json"
            start = time.perf_counter()
            async with session.request(step.method, base + step.path, headers=headers,
                                       data=body) as r:
                await r.read()
                cache = r.headers.get("X-Cache", "")
                status = r.status
            latencies.append(time.perf_counter() - start)
            if status >= 500 or (step.method == "GET" and status != 200):
                result.errors += 1
            if step.method == "GET":
                hit = cache in ("HIT", "STALE")
                result.reads += 1
                result.hits += hit
                if step.path == DASHBOARD:
                    result.dashboard_reads += 1
                    result.dashboard_hits += hit
            else:
                result.writes += 1

        if rate > 0:
            await _paced(steps, rate, send)
            return

        async def worker(mine: list[Step]) -> None:
            for step in mine:
                await send(step)

        shards: list[list[Step]] = [[] for _ in range(concurrency)]
        for step in steps:
            shards[step.caller % concurrency].append(step)
        await asyncio.gather(*(worker(s) for s in shards))


async def _paced(steps: list[Step], rate: float,
                 send: Callable[[Step], Awaitable[None]]) -> None:
    """Each step at its arrival time (start + i / rate), after its caller's previous one."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    previous: dict[int, asyncio.Task[None]] = {}
    tasks: list[asyncio.Task[None]] = []

    async def after(before: asyncio.Task[None] | None, step: Step) -> None:
        if before is not None:
            await before
        await send(step)

    for i, step in enumerate(steps):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(after(previous.get(step.caller), step))
        previous[step.caller] = task
        tasks.append(task)
    await asyncio.gather(*tasks)


def scrape(admin_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics") as r:
        return str(r.read().decode())


def upstream_gets(admin_port: int) -> int:
    return int(sum(float(v) for _, v in _UPSTREAM.findall(scrape(admin_port))))


def run_mode(bench: Bench, mode: str, steps: list[Step], tokens: list[str], rules: Path,
             redis_url: str, jwks_url: str, concurrency: int, rate: float) -> Result:
    py = sys.executable
    stub_port, port, admin = free_port(), free_port(), free_port()
    stub, stub_log = bench.spawn(f"stub-{mode}", LOAD_CPU, [py, "-m", "upstream_stub"],
                                 clean_env(STUB_PORT=str(stub_port), STUB_PG_DELAY_MS="2",
                                           STUB_FHIR_DELAY_MS="3"))
    wait_ready(stub_port, "/api/v1/patients/1", stub, stub_log)
    env = {"UPSTREAM_URL": f"http://127.0.0.1:{stub_port}", "SIDECAR_PORT": str(port),
           "SIDECAR_ADMIN_PORT": str(admin), "SIDECAR_ADMIN_HOST": "127.0.0.1",
           "CACHE_KEY_SECRET": "bench", "REDIS_URL": redis_url, "SIDECAR_CONFIG": str(rules)}
    if mode == "shared":
        env |= {"CACHE_JWT_JWKS_URL": jwks_url, "CACHE_JWT_ISSUER": ISSUER,
                "CACHE_JWT_AUDIENCE": AUDIENCE}
    proc, log = bench.spawn(f"sidecar-{mode}", SERVER_CPU, [py, "-m", "sidecar"],
                            clean_env(**env))
    wait_ready(port, "/api/v1/professionals/1", proc, log)  # not a route the trace reads
    result = Result(mode)
    before_gets, before_cpu, started = upstream_gets(admin), process_cpu(proc.pid), (
        time.perf_counter())
    asyncio.run(replay(port, steps, tokens, concurrency, result, rate))
    result.wall_seconds = time.perf_counter() - started
    result.cpu_seconds = process_cpu(proc.pid) - before_cpu
    result.upstream_gets = upstream_gets(admin) - before_gets
    for line in scrape(admin).splitlines():  # why reads missed: shown on stderr
        if line.startswith(("cache_not_stored_total", "cache_coalesced_total",
                            "cache_bypass_total", "cache_stale_served_total",
                            "cache_invalidations_total")):
            print(f"# {mode}: {line}", file=sys.stderr)
    for p in (proc, stub):
        p.terminate()
        p.wait(timeout=15)
    return result


HIT_LUA = """local i = 0
request = function()
  i = (i % 2001) + 1
  return wrk.format("GET", "{path}" .. i)
end
"""


def hit_path(bench: Bench, rules: dict[str, Path], jwks_url: str, token: str,
             rounds: int = 2) -> list[str]:
    """wrk -c64 over 2,001 warm entries, per mode and route (memory://): the hit path's
    cost with sharing on (token remembered, shared variant) against per-credential."""
    if shutil.which("wrk") is None:
        return ["(wrk not installed: hit-path table skipped)"]
    py = sys.executable
    stub_port = free_port()
    stub, stub_log = bench.spawn("stub-hits", LOAD_CPU, [py, "-m", "upstream_stub"],
                                 clean_env(STUB_PORT=str(stub_port)))
    wait_ready(stub_port, "/api/v1/patients/1", stub, stub_log)
    routes = {"patient (audited)": "/api/v1/patients/",
              "professional": "/api/v1/professionals/"}
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for mode in ("per-credential", "shared"):
            port, admin = free_port(), free_port()
            env = {"UPSTREAM_URL": f"http://127.0.0.1:{stub_port}", "SIDECAR_PORT": str(port),
                   "SIDECAR_ADMIN_PORT": str(admin), "SIDECAR_ADMIN_HOST": "127.0.0.1",
                   "CACHE_KEY_SECRET": "bench", "REDIS_URL": "memory://",
                   "SIDECAR_CONFIG": str(rules[mode]),
                   "CACHE_AUDIT_LOG": str(bench.tmp / f"audit-{mode}.log")}
            if mode == "shared":
                env |= {"CACHE_JWT_JWKS_URL": jwks_url, "CACHE_JWT_ISSUER": ISSUER,
                        "CACHE_JWT_AUDIENCE": AUDIENCE}
            proc, log = bench.spawn(f"sidecar-hits-{mode}", SERVER_CPU, [py, "-m", "sidecar"],
                                    clean_env(**env))
            wait_ready(port, "/api/v1/professionals/1", proc, log)
            for route, path in routes.items():
                script = bench.tmp / f"hits-{path.strip('/').replace('/', '-')}.lua"
                script.write_text(HIT_LUA.format(path=path))
                cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c64", "-d3s", "-H",
                       f"Authorization: Bearer {token}", "-s", str(script),
                       f"http://127.0.0.1:{port}"]
                subprocess.run(cmd, capture_output=True, check=True)  # warm every entry
                before = process_cpu(proc.pid)
                out = subprocess.run([*cmd[:6], "-d5s", *cmd[7:]], capture_output=True,
                                     text=True, check=True).stdout
                rps, total = _wrk_figures(out)
                runs.setdefault((mode, route), []).append(
                    (rps, (process_cpu(proc.pid) - before) / total * 1e6))
            proc.terminate()
            proc.wait(timeout=15)
    stub.terminate()
    stub.wait(timeout=15)
    rows = ["| mode | route | req/s (best of rounds) | CPU µs/req (best) |",
            "|---|---|---:|---:|"]
    for (mode, route), values in runs.items():
        rows.append(f"| {mode} | {route} | {max(v[0] for v in values):,.0f} | "
                    f"{min(v[1] for v in values):.0f} |")
    return rows


def _wrk_figures(out: str) -> tuple[float, int]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    assert rps is not None and total is not None, out
    return float(rps[1]), int(total[1])


def flush(redis_port: int) -> None:
    with socket.create_connection(("127.0.0.1", redis_port), timeout=5) as s:
        s.sendall(b"FLUSHALL\r\n")
        s.recv(64)


def report(results: list[Result], steps: list[Step], shape: Shape, concurrency: int,
           rate: float, hits: list[str]) -> str:
    shared_hits, reads = ideal(steps, per_caller=False)
    own_hits, _ = ideal(steps, per_caller=True)
    ideal_by_mode = {"per-credential": own_hits / reads, "shared": shared_hits / reads}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip() or "unknown"
    rows = []
    for r in results:
        requests = r.reads + r.writes
        rows.append(
            f"| {r.mode} | {r.hits / r.reads:.1%} | {ideal_by_mode[r.mode]:.1%} | "
            f"{r.upstream_gets:,} | {r.reads - r.upstream_gets:,} "
            f"({1 - r.upstream_gets / r.reads:.1%}) | {r.pct(0.5):.2f} | {r.pct(0.99):.2f} | "
            f"{r.cpu_seconds / requests * 1e6:.0f} | {requests / r.wall_seconds:,.0f} | "
            f"{r.errors} |")
    by_route = []
    for r in results:
        own = r.mode == "per-credential"
        for name, dash in (("patient", False), ("dashboard", True)):
            got_hits = r.dashboard_hits if dash else r.hits - r.dashboard_hits
            got_reads = r.dashboard_reads if dash else r.reads - r.dashboard_reads
            best, of = ideal(steps, per_caller=own, dashboard=dash)
            by_route.append(f"| {r.mode} | {name} | {got_reads:,} | {got_hits / got_reads:.1%} "
                            f"| {best / of:.1%} |")
    writes = sum(s.method != "GET" for s in steps)
    dashboard = sum(s.path == DASHBOARD for s in steps)
    return "\n".join([
        "# Workload replay", "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}, commit `{commit}`; nproc="
        f"{os.cpu_count()}, Python {platform.python_version()}; load average at the end "
        f"{os.getloadavg()[0]:.1f} (other engineers' jobs share the machine)",
        f"- Trace (seed {shape.seed}): {len(steps):,} requests, {shape.patients:,} patients "
        f"(Zipf s={shape.zipf_s}), {shape.callers} callers in sessions (open a patient, re-read "
        f"it {shape.rereads[0]}-{shape.rereads[1]} times), {writes:,} writes "
        f"({writes / len(steps):.1%}, each erasing the patient and the dashboard), "
        f"{dashboard:,} dashboard polls; {reads:,} cacheable reads.",
        (f"- Replay: open loop, the trace's order at {rate:,.0f} requests/s (a caller's next "
         "request waits for its previous answer), up to "
         f"{concurrency} keep-alive connections (aiohttp client)" if rate > 0 else
         f"- Replay: closed loop, {concurrency} keep-alive connections (aiohttp client) as "
         "fast as they go, each caller's requests in trace order (a stress run)") +
        "; stub with 2 ms PostgreSQL + 3 ms FHIR per read; Redis with the near tier; shipped "
        "defaults otherwise (access log and audit to stdout).",
        "- Ideal: an unbounded cache that never expires on the same trace, keyed per entity "
        "(shared: what the seed's in-app cache reaches) or per entity and caller.", "",
        "| mode | hit ratio (X-Cache) | ideal | upstream GETs | GETs saved | p50 ms | p99 ms "
        "| CPU µs/req | req/s | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows, "",
        "By route:", "",
        "| mode | route | reads | hit ratio (X-Cache) | ideal |", "|---|---|---:|---:|---:|",
        *by_route, "",
        "`GETs saved` counts reads answered without an upstream GET (hits, and misses that "
        "waited for another caller's fetch). CPU is the sidecar process's user+system time "
        "over the replay divided by all requests.", "",
        "## Hit path with sharing on", "",
        "Every read a hit (`memory://`, 2,001 warm entries, one verified clinician token, "
        "`wrk -t1 -c64` 5 s after a 3 s warm-up): what verifying (a remembered result) and "
        "the shared variant add, and what the audit line costs on the audited rule.", "",
        *hits, "",
        "Reproduce: `make bench-workload` (`.venv/bin/python -m bench.workload --help`).", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=Shape().requests)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=300.0,
                        help="requests/s in trace order (a clinic's pace); 0: as fast as "
                        "--concurrency connections go")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-workload.md")
    parser.add_argument("--no-hits", action="store_true", help="skip the wrk hit-path table")
    args = parser.parse_args()
    shape = Shape(requests=args.requests)
    steps = generate(shape)
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    doc, tokens = mint(shape.callers)
    with tempfile.TemporaryDirectory(prefix="sidecar-workload-",
                                     ignore_cleanup_errors=True) as tmp:
        bench = Bench(Path(tmp))
        shipped = (ROOT / "config" / "routes.yaml").read_text()
        rules = {"per-credential": Path(tmp) / "per-credential.yaml",
                 "shared": Path(tmp) / "shared.yaml"}
        rules["per-credential"].write_text(shipped)
        rules["shared"].write_text(shared_rules(shipped))
        loop = asyncio.new_event_loop()
        runner, jwks_url = loop.run_until_complete(serve_jwks(doc))
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        results = []
        try:
            rport = free_port()
            bench.spawn("redis", SERVER_CPU, ["redis-server", "--port", str(rport), "--bind",
                                              "127.0.0.1", "--save", "", "--appendonly", "no"],
                        clean_env())
            time.sleep(0.5)
            hits = [] if args.no_hits else hit_path(bench, rules, jwks_url, tokens[1])
            for mode in ("per-credential", "shared"):
                flush(rport)
                result = run_mode(bench, mode, steps, tokens, rules[mode],
                                  f"redis://127.0.0.1:{rport}/0", jwks_url, args.concurrency,
                                  args.rate)
                print(f"# {mode}: {result.hits}/{result.reads} hits, {result.upstream_gets} "
                      f"upstream GETs, {result.wall_seconds:.0f} s", file=sys.stderr)
                results.append(result)
        finally:
            bench.stop_all()
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
    text = report(results, steps, shape, args.concurrency, args.rate, hits)
    print(text)
    previous = args.out.read_text() if args.out.exists() else ""
    notes = previous.partition("<!-- notes -->")[2]  # kept across runs, as bench.run does
    args.out.write_text(text + ("<!-- notes -->" + notes if notes else ""))


if __name__ == "__main__":
    main()
