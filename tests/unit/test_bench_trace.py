"""The workload trace is seeded and shaped as the issue asks; the ideal ratio is exact."""

from __future__ import annotations

from bench.trace import DASHBOARD, Shape, Step, generate, ideal


def test_the_trace_is_seeded_and_shaped() -> None:
    shape = Shape(requests=20_000)
    steps = generate(shape)
    assert steps == generate(shape)
    writes = sum(s.method == "PATCH" for s in steps) / len(steps)
    assert 0.02 <= writes <= 0.05
    assert 0.1 <= sum(s.path == DASHBOARD for s in steps) / len(steps) <= 0.2
    assert len({s.caller for s in steps}) == shape.callers
    patients = [s.path for s in steps if s.path != DASHBOARD]
    top = max(set(patients), key=patients.count)
    assert patients.count(top) > 20 * len(patients) / shape.patients  # Zipf-like


def test_ideal_hits_follow_writes_and_callers() -> None:
    p = "/api/v1/patients/1"
    steps = [Step(1, "GET", p), Step(2, "GET", p), Step(1, "GET", DASHBOARD),
             Step(2, "PATCH", p), Step(1, "GET", p), Step(2, "GET", DASHBOARD),
             Step(1, "GET", p)]
    assert ideal(steps, per_caller=False) == (2, 6)  # 2nd read of p, last read of p
    assert ideal(steps, per_caller=True) == (1, 6)  # only caller 1's last read of p
    assert ideal(steps, per_caller=False, dashboard=True) == (0, 2)
    assert ideal(steps, per_caller=False, dashboard=False) == (2, 4)
