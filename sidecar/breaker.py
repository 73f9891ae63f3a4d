"""Circuit breaker for the cache: after repeated failures, stop calling Redis for a while.

Without it a dead Redis costs every request a full timeout; with it, only one probe per
cool-down does, and caching resumes by itself once a probe succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Permit:
    """Leave to call the backend; `probe` marks the one half-open trial call."""

    __slots__ = ("probe",)

    def __init__(self, probe: bool) -> None:
        self.probe = probe


_CLOSED = Permit(False)


class Breaker:
    def __init__(
        self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = max(1, failures)
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def closed(self) -> bool:
        """The cheap form of `state == "closed"`, for the hit path."""
        return self._opened_at is None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def allow(self) -> Permit | None:
        """A permit to call the backend now, or None; in half-open, one probe at a time."""
        if self._opened_at is None:
            return _CLOSED
        if self._probing or self._clock() - self._opened_at < self.cooldown:
            return None
        self._probing = True
        return Permit(True)

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            self._opened_at = self._clock()
        self._probing = False

    def abandon(self, permit: Permit) -> None:
        """A call ended without a verdict (cancelled): if it was the probe, free its slot."""
        if permit.probe:
            self._probing = False
