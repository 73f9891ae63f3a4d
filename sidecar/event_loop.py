"""The event loop a sidecar process serves on: uvloop unless `SIDECAR_EVENT_LOOP=asyncio`.

uvloop (libuv, in C) makes the loop's own work cheaper: socket reads and writes, timers,
callbacks. Measured on the hit path it serves 3-6 % more requests per CPU (bench/results.md),
once the sidecar's own costs had been cut. `asyncio` stays one setting away, for a platform
without a uvloop wheel or to rule the loop out while debugging.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("sidecar")
T = TypeVar("T")


def factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for `asyncio.Runner` (None: asyncio's own)."""
    if choice != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:  # a platform without its wheel: say so, and serve anyway
        log.warning("SIDECAR_EVENT_LOOP=uvloop but uvloop is not installed: using asyncio")
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    with asyncio.Runner(loop_factory=factory(choice)) as runner:
        return runner.run(main)
