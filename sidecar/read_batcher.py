"""Concurrent lookups share Redis round trips: the HGETs of one event-loop turn go as one
pipeline.

Under load, a per-request HGET costs a pool checkout, redis-py's retry wrapper, one
`asyncio.timeout` and one send per request. Here the requests that arrive in the same loop
iteration are sent together (`MULTI`-less pipeline), on one connection, under one deadline,
and each caller gets its own reply. Several batches may be in flight at once, so a slow batch
does not hold the next one back.

Safety: the pipeline runs in its own task, so a caller that is cancelled (client gone) never
cancels the exchange halfway (the CVE-2023-28858 class); only the batch's own deadline does,
and redis-py then drops that connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

_MAX_BATCH = 128


class ReadBatcher:
    def __init__(self, client: Any, deadline: float) -> None:
        """`client`: a redis-py `Redis` or `RedisCluster` (both pipeline HGETs)."""
        self._client = client
        self._deadline = deadline
        self._pending: list[tuple[str, str, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def hget(self, key: str, field: str) -> asyncio.Future[Any]:
        """A future for `HGET key field`; it fails with the batch's error or timeout."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((key, field, future))
        if len(self._pending) >= _MAX_BATCH:
            self._flush()
        return future

    def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[str, str, asyncio.Future[Any]]]) -> None:
        try:
            async with asyncio.timeout(self._deadline):
                if len(batch) == 1:
                    key, field, _ = batch[0]
                    replies: list[Any] = [await self._client.hget(key, field)]
                else:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for key, field, _ in batch:
                            pipe.hget(key, field)
                        replies = await pipe.execute()
        except BaseException as exc:  # every waiter learns of it; none is left hanging
            failure = exc if isinstance(exc, Exception) else asyncio.CancelledError()
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if not future.done():
                future.set_result(reply)

    async def close(self) -> None:
        self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
