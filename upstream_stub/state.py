"""Mutable stub state, kept on the app so tests can inspect upstream traffic and reset it."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

from upstream_stub import data
from upstream_stub.render import StubError
from upstream_stub.settings import StubSettings

FIRST_CREATED_ID = 10**6
MISSING_FROM_ID = 10**15  # ids at or above this are "not in the database"


@dataclass
class StubState:
    settings: StubSettings
    hits: Counter[str] = field(default_factory=Counter)
    request_ids: list[str] = field(default_factory=list)  # X-Request-ID of each arrival
    patients: dict[int, data.Record] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    next_id: int = FIRST_CREATED_ID
    rng: random.Random = field(init=False)
    _arrivals: asyncio.Condition = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.settings.seed)
        self._arrivals = asyncio.Condition()

    async def arrived(self, key: str, request_id: str | None = None) -> None:
        """Count a request and wake whoever waits for it (`wait_for`)."""
        self.hits[key] += 1
        if request_id is not None:
            self.request_ids.append(request_id)
        async with self._arrivals:
            self._arrivals.notify_all()

    async def wait_for(self, *keys: str, count: int = 1) -> None:
        """Until every `"METHOD path"` in keys has reached the stub at least `count` times."""
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: all(self.hits[k] >= count for k in keys))

    def reset(self) -> None:
        self.hits.clear()
        self.request_ids.clear()
        self.patients.clear()
        self.deleted.clear()
        self.next_id = FIRST_CREATED_ID
        self.rng.seed(self.settings.seed)

    def patient(self, pid: int) -> data.Record:
        """The stored override if any, else the generated record; 404 if absent or deleted."""
        if pid >= MISSING_FROM_ID or pid in self.deleted:
            raise StubError(404, "Patient not found")
        return self.patients[pid] if pid in self.patients else data.patient(pid, self.settings.seed)

    def allocate_id(self) -> int:
        while self.next_id in self.patients or self.next_id in self.deleted:
            self.next_id += 1
        self.next_id += 1
        return self.next_id - 1

    async def backend(self, *, pg_rounds: int, fhir: bool, may_fail: bool) -> None:
        """Imitate the PostgreSQL/FHIR round trips: an outage fails fast, success costs time."""
        s = self.settings
        if may_fail and s.error_rate > 0 and self.rng.random() < s.error_rate:
            raise StubError(503, "backend unavailable")
        for delay_ms in [s.pg_delay_ms] * pg_rounds + ([s.fhir_delay_ms] if fhir else []):
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
