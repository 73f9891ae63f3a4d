"""Logging helpers: a rate-limited warning so a Redis outage cannot flood the logs."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import BinaryIO


class RateLimitedWarning:
    """At most one warning per `kind` per `interval`, reporting how many were suppressed."""

    def __init__(
        self, logger: logging.Logger, interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> bool:
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        suffix = f" ({suppressed} similar suppressed)" if suppressed else ""
        self._logger.warning("%s%s", message, suffix, extra={"kind": kind})
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra` fields with safe names are carried along."""

    _SKIP = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in self._SKIP and not name.startswith("_"):
                out[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = record.exc_info[0].__name__
        return json.dumps(out, default=str)


class _Fields(logging.Filter):
    """Adds fixed fields to every record (a worker's pid, so its lines can be told apart)."""

    def __init__(self, fields: Mapping[str, object]) -> None:
        super().__init__()
        self._fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.update(self._fields)
        return True


def configure_logging(level: str = "INFO", fields: Mapping[str, object] | None = None) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    if fields:
        handler.addFilter(_Fields(fields))
    JsonFormatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# POSIX: a write of at most PIPE_BUF bytes to a pipe is never interleaved with another
# process's. Linux's is 4096; so is the minimum POSIX allows.
PIPE_BUF = 4096


def pipe_writes(data: bytes) -> Iterator[bytes]:
    """Whole lines cut at line ends into writes of at most PIPE_BUF bytes (a longer line is
    one write of its own), so the batched lines of several processes sharing one stdout pipe
    (`SIDECAR_WORKERS`, a container's log pipe) never interleave inside a line."""
    start, end = 0, len(data)
    while end - start > PIPE_BUF:
        cut = data.rfind(b"\n", start, start + PIPE_BUF)
        if cut < 0:  # one line longer than PIPE_BUF
            cut = data.find(b"\n", start + PIPE_BUF)
            if cut < 0:
                break
        yield data[start:cut + 1]
        start = cut + 1
    if start < end:
        yield data[start:]


def write_lines(stream: BinaryIO, data: bytes) -> None:
    """Batched log lines to a stream that may be a shared pipe (see `pipe_writes`)."""
    for chunk in pipe_writes(data):
        stream.write(chunk)
        stream.flush()

