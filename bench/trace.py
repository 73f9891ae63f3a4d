"""A seeded clinical workload and the hit ratios an ideal cache would get on it.

Callers work in sessions: open a patient (Zipf-like popularity over 50,000), re-read it a
few times, move on; everybody polls the dashboard; a few requests are writes, which erase
the patient and the dashboard (as the shipped rules' `invalidates` do). The trace is a
list in arrival order; `ideal` replays it through a cache with no size bound and no expiry
(the replay is shorter than every TTL), keyed per entity (shared, what the seed's in-app
cache reaches) or per entity and caller (today's per-credential variants).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

DASHBOARD = "/api/v1/statistics/dashboard"


@dataclass(frozen=True, slots=True)
class Step:
    caller: int
    method: str  # GET or PATCH
    path: str

    @property
    def key(self) -> str:
        """The entity a GET reads (the cache key), or a write addresses."""
        return self.path


@dataclass(frozen=True, slots=True)
class Shape:
    requests: int = 40_000
    patients: int = 50_000
    callers: int = 500
    zipf_s: float = 1.0  # popularity of the patient ranked r is proportional to 1/r^s
    rereads: tuple[int, int] = (1, 4)  # a session re-reads its patient this many times
    write_share: float = 0.03  # of all requests (2-5 %)
    dashboard_share: float = 0.15  # of all requests
    seed: int = 20261203


def generate(shape: Shape) -> list[Step]:
    rng = random.Random(shape.seed)
    weights = [1 / (rank ** shape.zipf_s) for rank in range(1, shape.patients + 1)]
    cumulative = list(itertools.accumulate(weights))
    ids = list(range(1, shape.patients + 1))
    rng.shuffle(ids)  # popularity is not id order
    current: dict[int, tuple[int, int]] = {}  # caller -> (patient id, reads left)
    steps: list[Step] = []

    def open_patient() -> tuple[int, int]:
        (rank,) = rng.choices(range(shape.patients), cum_weights=cumulative)
        return ids[rank], 1 + rng.randint(*shape.rereads)

    for _ in range(shape.requests):
        caller = rng.randrange(shape.callers)
        r = rng.random()
        if r < shape.dashboard_share:
            steps.append(Step(caller, "GET", DASHBOARD))
            continue
        patient, left = current.get(caller) or open_patient()
        if left <= 0:
            patient, left = open_patient()
        path = f"/api/v1/patients/{patient}"
        if r < shape.dashboard_share + shape.write_share:
            steps.append(Step(caller, "PATCH", path))  # an edit of the open record
            current[caller] = (patient, left)
            continue
        steps.append(Step(caller, "GET", path))
        current[caller] = (patient, left - 1)
    return steps


def ideal(steps: list[Step], *, per_caller: bool, dashboard: bool | None = None
          ) -> tuple[int, int]:
    """(hits, reads) of an unbounded, non-expiring cache on the trace; `dashboard` True or
    False counts only the dashboard's or only the patients' reads (None: all)."""
    held: set[tuple[str, int]] = set()
    present: dict[str, set[int]] = {}  # entity -> callers holding a copy
    hits = reads = 0
    for step in steps:
        if step.method != "GET":
            for key in (step.key, DASHBOARD):
                for caller in present.pop(key, set()):
                    held.discard((key, caller))
            continue
        counted = dashboard is None or dashboard == (step.key == DASHBOARD)
        reads += counted
        owner = step.caller if per_caller else -1
        if (step.key, owner) in held:
            hits += counted
        else:
            held.add((step.key, owner))
            present.setdefault(step.key, set()).add(owner)
    return hits, reads
