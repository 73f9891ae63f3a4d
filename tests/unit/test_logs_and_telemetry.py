"""Rate-limited warnings, the JSON formatter, and the OTLP switch."""

from __future__ import annotations

import json
import logging

import pytest

from sidecar.logs import PIPE_BUF, JsonFormatter, RateLimitedWarning, pipe_writes
from sidecar.telemetry import Telemetry
from tests.unit.conftest import Clock


def test_one_warning_per_kind_per_interval_with_a_suppressed_count(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    warn = RateLimitedWarning(logging.getLogger("t"), 10.0, clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        assert warn.warn("get-timeout", "cache get failed")
        for _ in range(99):
            assert not warn.warn("get-timeout", "cache get failed")
        assert warn.warn("set-error", "cache set failed")  # another kind is not held back
        clock.now += 10
        assert warn.warn("get-timeout", "cache get failed")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["cache get failed", "cache set failed",
                        "cache get failed (99 similar suppressed)"]


def test_json_lines_carry_extra_fields() -> None:
    record = logging.LogRecord("sidecar", logging.INFO, __file__, 1, "hello", None, None)
    record.rule = "patient"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "hello" and line["rule"] == "patient" and line["level"] == "info"


def test_otlp_only_when_the_standard_endpoint_is_set() -> None:
    assert not Telemetry.from_env({}).enabled
    telemetry = Telemetry.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    try:
        assert telemetry.enabled
    finally:
        telemetry.shutdown()


def test_batched_lines_are_written_in_pipe_sized_whole_lines() -> None:
    """Several workers share one stdout pipe: no write may exceed PIPE_BUF or cut a line."""
    lines = [b'{"n":%d,"pad":"%s"}\n' % (n, b"x" * (n % 300)) for n in range(200)]
    data = b"".join(lines)
    chunks = list(pipe_writes(data))
    assert b"".join(chunks) == data and len(chunks) > 1
    assert all(len(c) <= PIPE_BUF and c.endswith(b"\n") for c in chunks)
    long_line = b"y" * (PIPE_BUF + 10) + b"\n"
    assert list(pipe_writes(b"a\n" + long_line + b"b\n")) == [b"a\n", long_line, b"b\n"]
    assert list(pipe_writes(b"")) == []
