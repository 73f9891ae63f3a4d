"""Circuit breaker over an injected clock: open, cool down, one probe, close or reopen."""

from __future__ import annotations

from sidecar.breaker import Breaker
from tests.unit.conftest import Clock


def opened(clock: Clock, failures: int = 3, cooldown: float = 2.0) -> Breaker:
    breaker = Breaker(failures, cooldown, clock)
    for _ in range(failures):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "open"
    return breaker


def test_stays_closed_below_the_threshold(clock: Clock) -> None:
    breaker = Breaker(3, 2.0, clock)
    for _ in range(2):
        breaker.failure()
    assert breaker.state == "closed"
    assert breaker.allow()


def test_a_success_resets_the_failure_count(clock: Clock) -> None:
    breaker = Breaker(3, 2.0, clock)
    for _ in range(2):
        breaker.failure()
    breaker.success()
    for _ in range(2):
        breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open"


def test_opens_after_n_failures_and_rejects_during_cooldown(clock: Clock) -> None:
    breaker = opened(clock)
    assert not breaker.allow()
    clock.now += 1.999
    assert breaker.state == "open"
    assert not breaker.allow()


def test_threshold_of_zero_means_one(clock: Clock) -> None:
    breaker = Breaker(0, 2.0, clock)
    breaker.failure()
    assert breaker.state == "open"


def test_one_probe_at_a_time_after_cooldown(clock: Clock) -> None:
    breaker = opened(clock)
    clock.now += 2.0
    assert breaker.state == "half-open"
    assert breaker.allow()  # the probe
    assert breaker.state == "half-open"
    assert not breaker.allow()
    clock.now += 100
    assert not breaker.allow()  # still waiting for the probe's verdict


def test_probe_success_closes(clock: Clock) -> None:
    breaker = opened(clock)
    clock.now += 2.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(5))
    # The failure count started over: it takes the full threshold to open again.
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed"


def test_probe_failure_reopens_for_a_full_cooldown(clock: Clock) -> None:
    breaker = opened(clock)
    clock.now += 5.0
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now += 1.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_a_single_probe_failure_reopens_even_with_a_high_threshold(clock: Clock) -> None:
    breaker = opened(clock, failures=10)
    clock.now += 2.0
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "open"


def test_abandon_frees_the_probe(clock: Clock) -> None:
    breaker = opened(clock)
    clock.now += 2.0
    probe = breaker.allow()
    assert probe is not None
    breaker.abandon(probe)  # the probe was cancelled: no verdict
    assert breaker.state == "half-open"
    assert breaker.allow()
    assert not breaker.allow()


def test_abandon_by_a_call_that_is_not_the_probe_keeps_one_probe(clock: Clock) -> None:
    breaker = Breaker(3, 2.0, clock)
    call_a = breaker.allow()  # admitted while closed, still in flight
    assert call_a is not None
    for _ in range(3):
        breaker.failure()
    clock.now += 2.0
    assert breaker.allow()  # call B: the probe
    breaker.abandon(call_a)  # call A is cancelled
    assert not breaker.allow()
