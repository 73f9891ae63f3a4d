"""A revalidated refresh next to a full refetch: what the upstream spends and sends.

One sidecar (Redis, shipped defaults) in front of the stub (10 ms PostgreSQL + 10 ms FHIR
per read) through a relay that counts the bytes the upstream sends. The patient rule's TTL is
1 s, kept 60 s for stale-if-error and with no stale-while-revalidate window, so an expired
entry is refreshed inside the request:

- **revalidated**: the record did not change; the conditional GET (`If-None-Match`) is
  answered 304 after the service's row read, without its FHIR read or the body;
- **full refetch**: the record changed at the service (a write that did not go through the
  sidecar), so the same conditional GET gets a whole 200.

Reported per refresh: the caller's latency (p50), the upstream's time to headers (the
sidecar's `sidecar_upstream_duration_seconds`) and the bytes the upstream sent.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import statistics
import sys
import threading
import time
import urllib.request
from contextlib import closing
from pathlib import Path

from bench.run import (
    AUTH,
    BODY_BYTES,
    LOAD_CPU,
    SERVER_CPU,
    Bench,
    clean_env,
    free_port,
    wait_ready,
)

KEYS = 100
RULES = """rules:
  - name: patient
    methods: [GET]
    path: /api/v1/patients/{id}
    key: identity:patient:{id}
    ttl: 1
    stale: {if_error: 60, max: 60}  # kept past its TTL, refreshed in the request
"""
_UPSTREAM = re.compile(
    r'^sidecar_upstream_duration_seconds_(sum|count)\{rule="patient"\} (\S+)$', re.M)


class Relay:
    """TCP relay to the stub, counting the bytes the stub sends (its own event loop)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.received = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0

    def start(self) -> None:
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await src.read(65536):
                    if count:
                        self.received += len(data)
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[float, str]:
    start = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": AUTH, "X-Stub-Body-Bytes": BODY_BYTES})
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        sys.exit(f"revalidation bench: {path} answered {resp.status}")
    return time.perf_counter() - start, resp.headers.get("Cache-Status", "")


def _upstream_seconds(admin: int) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics") as r:
        found = dict(_UPSTREAM.findall(r.read().decode()))
    return float(found.get("sum", 0)), float(found.get("count", 0))


def _change(stub: int, path: str) -> None:
    with closing(http.client.HTTPConnection("127.0.0.1", stub, timeout=5)) as conn:
        conn.request("PATCH", path, body=b'{"note": "changed at the service"}',
                     headers={"Authorization": AUTH, "Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()


def measure(bench: Bench, redis_url: str) -> list[str]:
    py = sys.executable
    stub_port = free_port()
    stub, log = bench.spawn("stub-revalidation", LOAD_CPU, [py, "-m", "upstream_stub"],
                            clean_env(STUB_PORT=str(stub_port), STUB_PG_DELAY_MS="10",
                                      STUB_FHIR_DELAY_MS="10"))
    wait_ready(stub_port, "/api/v1/patients/1", stub, log)
    relay = Relay(stub_port)
    relay.start()
    rules = bench.tmp / "revalidation.yaml"
    rules.write_text(RULES)
    port, admin = free_port(), free_port()
    proc, log = bench.spawn("sidecar-revalidation", SERVER_CPU, [py, "-m", "sidecar"], clean_env(
        UPSTREAM_URL=f"http://127.0.0.1:{relay.port}", SIDECAR_PORT=str(port),
        SIDECAR_ADMIN_PORT=str(admin), SIDECAR_ADMIN_HOST="127.0.0.1", REDIS_URL=redis_url,
        SIDECAR_CONFIG=str(rules), CACHE_KEY_SECRET="bench"))  # noqa: S106
    wait_ready(port, "/api/v1/professionals/1", proc, log)  # passes through; no patient filled
    rows = []
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as conn:
        for n, (name, changed) in enumerate((("revalidated (304)", False),
                                             ("full refetch (200)", True))):
            paths = [f"/api/v1/patients/{20_000_000 + n * KEYS + i}" for i in range(KEYS)]
            for path in paths:
                _get(conn, path)  # filled
                if changed:
                    _change(stub_port, path)
            time.sleep(1.2)  # every entry is past its 1 s TTL
            seconds0, count0 = _upstream_seconds(admin)
            received0 = relay.received
            latencies, statuses = [], set()
            for path in paths:
                took, status = _get(conn, path)
                latencies.append(took)
                statuses.add(status.split(";", 1)[1].strip() if ";" in status else status)
            seconds1, count1 = _upstream_seconds(admin)
            upstream_ms = 1000 * (seconds1 - seconds0) / max(count1 - count0, 1)
            rows.append(f"| {name} | {KEYS} | {1000 * statistics.median(latencies):.2f} | "
                        f"{upstream_ms:.2f} | {(relay.received - received0) / KEYS:,.0f} | "
                        f"`{', '.join(sorted(statuses))}` |")
    for p in (proc, stub):
        p.terminate()
        p.wait(timeout=15)
    return [
        "## Revalidation: a refreshed entry, 304 against a whole 200", "",
        f"{KEYS} expired entries each (patient TTL 1 s, no stale-while-revalidate, so the "
        "refresh is in the request), refreshed one at a time through the sidecar (Redis) "
        "from a stub with 10 ms PostgreSQL + 10 ms FHIR per read that validates with the "
        "row read only. "
        "Upstream time is to the response headers; bytes are what the upstream sent, counted "
        "at a relay in between.", "",
        "| refresh | entries | caller p50 ms | upstream ms/refresh | upstream bytes/refresh "
        "| Cache-Status |", "|---|---:|---:|---:|---:|---|", *rows, "",
    ]


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory(prefix="sidecar-reval-") as tmp:
        b = Bench(Path(tmp))
        rport = free_port()
        b.spawn("redis", SERVER_CPU, ["redis-server", "--port", str(rport), "--bind",
                                      "127.0.0.1", "--save", "", "--appendonly", "no"],
                clean_env())
        time.sleep(0.5)
        try:
            print("\n".join(measure(b, f"redis://127.0.0.1:{rport}/0")))
        finally:
            b.stop_all()
