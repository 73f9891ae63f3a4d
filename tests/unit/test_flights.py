"""Flights.idle returns once every fetch has finished, whatever the interpreter's scheduling."""

from __future__ import annotations

import asyncio

from sidecar.flights import Flights


async def test_idle_returns_when_a_fetch_finished_but_its_callbacks_are_still_queued() -> None:
    # The fetch wakes the waiter before its own done-callbacks run: on Python 3.12+ a loop
    # that awaits gather() over finished tasks never yields, and idle() spun forever (CI).
    flights: Flights[str] = Flights()
    woke = asyncio.Event()

    async def fetch() -> str:
        woke.set()
        return "body"

    flights.background(("identity:patient:42", "v"), fetch)
    await woke.wait()
    await asyncio.wait_for(flights.idle(), timeout=5)
    assert len(flights) == 0
