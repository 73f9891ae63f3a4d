"""Rate-limited warnings, the JSON formatter, and the OTLP switch."""

from __future__ import annotations

import json
import logging

import pytest

from sidecar.logs import JsonFormatter, RateLimitedWarning
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
