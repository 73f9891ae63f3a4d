"""The pure parts of the benchmark: wrk output, CPU accounting, medians and ratios.

Kept apart from `run.py` (which starts processes) so they can be unit-tested.
"""

from __future__ import annotations

import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class Run:
    """One wrk run: throughput, latency (ms), errors, CPU."""

    rps: float
    p50: float
    p99: float
    requests: int
    errors: int  # non-2xx/3xx plus socket errors
    cpu_us_per_request: float  # CPU of the server under test per request
    other_cpu: float  # % of one core used by processes outside the bench


def parse_wrk(out: str) -> tuple[float, float, float, int, int]:
    """(req/s, p50 ms, p99 ms, requests, errors) from `wrk --latency` output."""
    found = re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)$", out, re.M)
    pct = {int(p): float(v) * _UNITS[unit] for p, v, unit in found}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or total is None or set(pct) != {50, 99}:
        raise ValueError(f"unexpected wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx[1]) if non2xx else 0) + (
        sum(int(g) for g in sock.groups()) if sock else 0)
    return float(rps[1]), pct[50], pct[99], int(total[1]), errors


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy(stat: str | None = None) -> float:
    """Busy CPU seconds of the whole machine (user+nice+system+irq+softirq+steal)."""
    line = (stat if stat is not None else Path("/proc/stat").read_text()).split("\n", 1)[0]
    ticks = [int(x) for x in line.split()[1:]]
    busy = ticks[0] + ticks[1] + ticks[2] + sum(ticks[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def other_cpu(machine_delta: float, ours: float, elapsed: float) -> float:
    """% of one core that processes outside the bench used during a run (never < 0)."""
    return max(0.0, 100 * (machine_delta - ours) / elapsed) if elapsed > 0 else 0.0


def median_run(runs: list[Run]) -> Run:
    """Per-field medians over rounds: one noisy round does not move the figure."""
    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    return Run(med([r.rps for r in runs]), med([r.p50 for r in runs]),
               med([r.p99 for r in runs]), sum(r.requests for r in runs),
               sum(r.errors for r in runs), med([r.cpu_us_per_request for r in runs]),
               max(r.other_cpu for r in runs))


def ratio(value: float, base: float) -> float | None:
    return value / base if base > 0 else None
