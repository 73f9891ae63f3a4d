"""Waiting in tests without depending on the machine's speed.

Budgets here are generous (a busy 2-core CI box must not miss them): they bound a hang,
they do not measure speed. Await an event where there is one (`within`); poll only what
lives in another process, always under a deadline that fails with a message (`until`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# What a test may wait for a thing that normally takes milliseconds.
PATIENCE = 30.0


async def within(awaitable: Awaitable[T], what: str, seconds: float = PATIENCE) -> T:
    """Await an event; fail clearly (not with a bare TimeoutError) if it never comes."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise AssertionError(f"{what}: not within {seconds:g} s") from None


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = PATIENCE,
                every: float = 0.05) -> float:
    """Poll another process's state until `check()` holds; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(every)  # polling another process: there is no event to await
    raise AssertionError(f"{what}: not within {seconds:g} s")
