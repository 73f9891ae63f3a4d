"""The audit sink: one JSON line per answer served from the cache on an `audit: true` rule.

The service's own access log never sees a cached read, so this is where "who read which
record, and when" is kept (GDPR art. 30/32, HIPAA §164.312(b)). It is the one place a
record id appears; the access log and metrics stay free of ids.

Each line is written synchronously (one `write` to an `O_APPEND` file descriptor, or to
stdout under the logger name `sidecar.audit`), so the caller knows at once whether it was
kept: `CACHE_AUDIT_REQUIRED=true` then answers from the upstream instead of the cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable

STDOUT = "stdout"
LOGGER = "sidecar.audit"


class AuditSink:
    """Writes audit lines to a file (appended, created 0600) or to stdout."""

    def __init__(self, target: str, required: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self.required = required
        self._clock = clock
        self._fd: int | None = None
        self._second = -1
        self._stamp = ""

    def write(self, *, rule: str, key: str, subject: str, client: str | None,
              request_id: str, outcome: str, status: int) -> bool:
        """Write one line; False when it could not be written (the caller counts it).

        `request_id` is of the safe alphabet and `outcome` a fixed label; the rest is
        JSON-quoted (short strings: no encoder of a whole record per hit).
        """
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        quote = json.dumps
        data = (f'{{"ts":"{self._stamp}.{int((now - second) * 1000):03d}Z","level":"info",'
                f'"logger":"{LOGGER}","msg":"cached read","rule":{quote(rule)},'
                f'"key":{quote(key)},"subject":{quote(subject)},"client":{quote(client)},'
                f'"request_id":"{request_id}","outcome":"{outcome}","status":{status}}}\n'
                ).encode()
        try:
            if self.target == STDOUT:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            else:
                self._write_file(data)
        except (OSError, ValueError):
            self.close()  # reopened on the next line (a rotated or remounted file)
            return False
        return True

    def _write_file(self, data: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError("short write to the audit log")

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
