"""The benchmark's pure parts: wrk parsing, CPU accounting, medians."""

from __future__ import annotations

import pytest

from bench.measure import Run, machine_busy, median_run, other_cpu, parse_wrk, ratio

WRK = """Running 2s test @ http://127.0.0.1:1/
  1 threads and 64 connections
  Latency Distribution
     50%    2.71ms
     75%    3.00ms
     90%    4.10ms
     99%  812.00us
  41972 requests in 2.00s, 70.1MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  20986.10
"""


def test_wrk_output_is_parsed_with_units_and_errors() -> None:
    assert parse_wrk(WRK) == (20986.10, 2.71, 0.812, 41972, 7)


def test_unexpected_wrk_output_is_refused() -> None:
    with pytest.raises(ValueError, match="unexpected wrk output"):
        parse_wrk("wrk: connection refused")


def test_machine_busy_counts_user_nice_system_irq_softirq_steal() -> None:
    ticks = machine_busy("cpu  100 10 50 9999 40 5 5 3 0 0\ncpu0 1 2 3\n")
    assert ticks * __import__("os").sysconf("SC_CLK_TCK") == pytest.approx(173)


def test_other_cpu_is_what_the_bench_did_not_use_and_never_negative() -> None:
    assert other_cpu(3.0, 2.0, 2.0) == pytest.approx(50.0)
    assert other_cpu(1.0, 2.0, 2.0) == 0.0
    assert other_cpu(1.0, 0.0, 0.0) == 0.0


def test_medians_resist_one_noisy_round_and_keep_the_worst_noise() -> None:
    runs = [Run(100, 1.0, 5.0, 10, 0, 50, 1), Run(10, 9.0, 50.0, 10, 1, 500, 40),
            Run(110, 1.1, 6.0, 10, 0, 55, 2)]
    med = median_run(runs)
    assert (med.rps, med.p50, med.p99, med.cpu_us_per_request) == (100, 1.1, 6.0, 55)
    assert (med.requests, med.errors, med.other_cpu) == (30, 1, 40)
    assert ratio(50, 100) == 0.5 and ratio(1, 0) is None
