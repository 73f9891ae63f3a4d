"""One JSON line per request, sampled: enough to follow a request, nothing that is PHI.

The path is never logged (it carries the patient id); the rule name stands for it.

It is on by default, so it must cost little on a hit: no `LogRecord`, no `uuid4` (an OS
random read per call), no JSON encoder. Every field comes from a known-safe alphabet (rule
names are JSON-quoted once), a line is one f-string, and lines are written in batches, at
most `FLUSH_EVERY` seconds late, to the same stdout as the other JSON log lines. Errors
(5xx) and slow requests are always logged, whatever the sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from typing import BinaryIO

from sidecar.logs import write_lines

FLUSH_EVERY = 0.05
_BATCH = 256
SLOW_SECONDS = 1.0


class AccessLog:
    def __init__(
        self, sample: float, rng: random.Random | None = None,
        stream: BinaryIO | None = None, slow_seconds: float = SLOW_SECONDS,
    ) -> None:
        self.sample = sample
        self.slow_seconds = slow_seconds
        self._random = rng or random.Random()
        self._stream = stream
        self._lines: list[str] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._quoted: dict[str, str] = {}
        self._second = -1
        self._stamp = ""

    def record(self, method: str, rule: str, cache: str, status: int,
               seconds: float, request_id: str) -> None:
        """`request_id` comes from `request_ids` (safe alphabet, no quoting needed)."""
        if (self.sample < 1 and status < 500 and seconds < self.slow_seconds
                and (self.sample <= 0 or self._random.random() >= self.sample)):
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        quoted = self._quoted.get(rule)
        if quoted is None:
            quoted = self._quoted[rule] = json.dumps(rule)
        # The method is an HTTP token (no quote or backslash can occur); cache is a label.
        self._lines.append(
            f'{{"ts":"{self._stamp}.{int((now - second) * 1000):03d}Z","level":"info",'
            f'"logger":"sidecar.access","msg":"request","request_id":"{request_id}",'
            f'"method":"{method}","rule":{quoted},"cache":"{cache}",'
            f'"status":{status},"duration_ms":{seconds * 1000:.3f}}}\n')
        if len(self._lines) >= _BATCH:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        """Write the pending lines (also called at shutdown)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._lines:
            return
        data = "".join(self._lines).encode()
        self._lines.clear()
        stream = self._stream or sys.stdout.buffer
        with contextlib.suppress(OSError, ValueError):  # a broken stdout fails no request
            write_lines(stream, data)
