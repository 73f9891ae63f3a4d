"""Single-flight: concurrent misses for one entity variant share one upstream request.

The shared fetch runs in its own task so a caller that disconnects does not cancel the
fetch that others are waiting for. Background refreshes (stale-while-revalidate) live
here too, so shutdown can cancel them all in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Flights(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[tuple[str, str], asyncio.Task[T]] = {}
        self._background: set[asyncio.Task[T]] = set()
        self._tasks: set[asyncio.Task[T]] = set()  # every fetch, forgotten ones included

    def __len__(self) -> int:
        return len(self._running)

    def join(
        self, key: tuple[str, str], start: Callable[[], Awaitable[T]]
    ) -> tuple[asyncio.Future[T], bool]:
        """The shared fetch for `key` and whether this caller started it."""
        task = self._running.get(key)
        leader = task is None
        if task is None:
            task = asyncio.ensure_future(start())
            self._running[key] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda t: self._forget(key, t))
        return asyncio.shield(task), leader

    def forget(self, keys: tuple[str, ...], prefix: str | None = None) -> None:
        """New callers for these entities start a fresh fetch (a write made the old stale)."""
        for running in [k for k in self._running
                        if k[0] in keys or (prefix and k[0].startswith(prefix + ":"))]:
            del self._running[running]

    def _forget(self, key: tuple[str, str], task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure is reported to every waiter instead

    def background(self, key: tuple[str, str], start: Callable[[], Awaitable[T]]) -> bool:
        """Start a refresh unless one for `key` already runs; never awaited by a request."""
        if key in self._running:
            return False
        future, _ = self.join(key, start)
        task = self._running[key]
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        future.cancel()  # the shield only; the task itself runs on
        return True

    async def idle(self) -> None:
        """Until every running fetch and refresh has finished (for drain and tests).

        Only unfinished tasks are awaited: on Python 3.12+ awaiting a gather of finished
        tasks does not yield, so a finished task whose `discard` callback is still queued
        would spin this loop forever (aiojobs#623). `sleep(0)` lets that callback run.
        """
        while self._tasks:
            pending = [task for task in self._tasks if not task.done()]
            if pending:
                await asyncio.wait(pending)
            else:
                await asyncio.sleep(0)

    async def cancel_background(self) -> None:
        """Refreshes nobody waits for: cancelled first when the process drains."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
