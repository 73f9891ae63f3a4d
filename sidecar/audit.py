"""The audit sink: one JSON line per answer served from the cache on an `audit: true` rule.

The service's own access log never sees a cached read, so this is where "who read which
record, and when" is kept (GDPR art. 30/32, HIPAA §164.312(b)). It is the one place a
record id appears; the access log and metrics stay free of ids.

Lines go to an `O_APPEND` file descriptor, or to stdout under the logger name
`sidecar.audit`. With `CACHE_AUDIT_REQUIRED=true` each line is written before its answer
leaves, so a line that cannot be written sends the request upstream instead. Otherwise the
lines of one event-loop iteration are written together at its end (one `write` for all the
answers it served, not one per hit), and lines that could not be written are counted in
`cache_audit_failures_total` all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable

from sidecar.logs import write_lines

_QUOTED_MAX = 4096  # remembered JSON-quoted strings (rules, subjects, client addresses)

STDOUT = "stdout"
LOGGER = "sidecar.audit"


class AuditSink:
    """Writes audit lines to a file (appended, created 0600) or to stdout."""

    def __init__(self, target: str, required: bool = False,
                 clock: Callable[[], float] = time.time,
                 on_lost: Callable[[int], object] | None = None) -> None:
        self.target = target
        self.required = required
        self._clock = clock
        self._on_lost = on_lost  # how many batched lines a failed write lost
        self._fd: int | None = None
        self._second = -1
        self._stamp = ""
        self._pending: list[str] = []
        self._scheduled = False
        self._quoted: dict[str, str] = {}

    def write(self, *, rule: str, key: str, subject: str, client: str | None,
              request_id: str, outcome: str, status: int) -> bool:
        """Write (or batch) one line; False when it could not be written (the caller counts
        it). Batched lines count their own failures, so they always return True.

        `key` is of the key alphabet (matching.SAFE_KEY), `request_id` of the safe one and
        `outcome` a fixed label; the rest is JSON-quoted once and remembered.
        """
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        quote = self._quote
        data = (f'{{"ts":"{self._stamp}.{int((now - second) * 1000):03d}Z","level":"info",'
                f'"logger":"{LOGGER}","msg":"cached read","rule":{quote(rule)},'
                f'"key":"{key}","subject":{quote(subject)},'
                f'"client":{"null" if client is None else quote(client)},'
                f'"request_id":"{request_id}","outcome":"{outcome}","status":{status}}}\n')
        if self.required:
            return self._emit(data.encode())
        self._pending.append(data)  # encoded with the batch
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        return True

    def flush(self) -> None:
        """Write the batched lines in one call (end of the loop iteration, and at close)."""
        self._scheduled = False
        if not self._pending:
            return
        data, lost = "".join(self._pending).encode(), len(self._pending)
        self._pending.clear()
        if not self._emit(data) and self._on_lost is not None:
            self._on_lost(lost)

    def _quote(self, text: str) -> str:
        quoted = self._quoted.get(text)
        if quoted is None:
            if len(self._quoted) >= _QUOTED_MAX:
                self._quoted.clear()
            quoted = self._quoted[text] = json.dumps(text)
        return quoted

    def _emit(self, data: bytes) -> bool:
        try:
            if self.target == STDOUT:
                write_lines(sys.stdout.buffer, data)
            else:  # O_APPEND on a file: one write stays whole
                self._write_file(data)
        except (OSError, ValueError):
            self.close_fd()  # reopened on the next line (a rotated or remounted file)
            return False
        return True

    def _write_file(self, data: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError("short write to the audit log")

    def close(self) -> None:
        """Write what is batched, then let the descriptor go (shutdown)."""
        self.flush()
        self.close_fd()

    def close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
