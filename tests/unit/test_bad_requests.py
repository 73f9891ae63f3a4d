"""Parser errors: which kind each is, and how `BadRequestLog` counts and throttles them."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)

from sidecar.bad_requests import BadRequestLog, bad_request_kind
from sidecar.metrics import BAD_REQUEST_KINDS, Metrics
from tests.unit.conftest import Clock


@pytest.mark.parametrize("exc, kind", [
    (BadStatusLine("GET /x HTTP/1.1 x"), "bad-request-line"),
    (BadHttpMethod("BREW"), "bad-request-line"),
    (InvalidURLError("/\x00"), "bad-request-line"),
    (InvalidHeader("X-Y"), "bad-header"),
    (BadHttpMessage("Invalid header token:\n\n    b'Bad Name: 1'"), "bad-header"),  # C parser
    (BadHttpMessage("Invalid character in Content-Length"), "bad-header"),
    (LineTooLong("4444", 8190), "too-large"),
    (BadHttpMessage("Too many headers received"), "too-large"),
    (ContentLengthError("Not enough data to satisfy content length header."), "other"),
    (BadHttpMessage("Invalid character in chunk size"), "other"),
])
def test_kind_of_each_parser_error(exc: HttpProcessingError, kind: str) -> None:
    assert bad_request_kind(exc) == kind
    assert kind in BAD_REQUEST_KINDS


def _value(metrics: Metrics, kind: str) -> float:
    value = metrics.registry.get_sample_value("sidecar_bad_requests_total", {"kind": kind})
    assert value is not None
    return value


def test_fifty_parser_errors_count_fifty_and_log_once_then_a_summary(
    caplog: pytest.LogCaptureFixture, clock: Clock,
) -> None:
    metrics = Metrics()
    server_log = BadRequestLog(metrics.bad_requests, 10.0, clock=clock)
    with caplog.at_level(logging.DEBUG):
        for n in range(50):
            exc = LineTooLong("4" * 9000, 8190) if n % 2 else BadStatusLine("GET /42 x")
            server_log.exception("Error handling request from %s", "127.0.0.1", exc_info=exc)
        assert [r.getMessage() for r in caplog.records] == [
            "malformed request answered 400 (bad-request-line, BadStatusLine)"]
        clock.now += 10.0
        server_log.exception("Error handling request from %s", "127.0.0.1",
                             exc_info=InvalidHeader("Bad Name"))
    assert caplog.records[-1].getMessage() == (
        "malformed request answered 400 (bad-header, InvalidHeader) (49 similar suppressed)")
    assert caplog.records[-1].name == "sidecar.http"
    assert caplog.records[-1].levelno == logging.WARNING
    assert (_value(metrics, "too-large"), _value(metrics, "bad-request-line"),
            _value(metrics, "bad-header"), _value(metrics, "other")) == (25, 25, 1, 0)
    assert "4444" not in caplog.text


def test_first_request_bad_method_logged_at_debug_is_counted_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    server_log = BadRequestLog(metrics.bad_requests, 10.0)
    server_log.debug("Error handling request from %s", "127.0.0.1",
                     exc_info=BadHttpMethod("\x16\x03\x01"))
    assert _value(metrics, "bad-request-line") == 1


def test_other_errors_still_reach_aiohttp_server_at_error_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    server_log = BadRequestLog(metrics.bad_requests, 10.0)
    with caplog.at_level(logging.INFO):
        try:
            raise RuntimeError("handler bug")
        except RuntimeError:
            server_log.exception("Error handling request from %s", "127.0.0.1")
        server_log.exception("Unhandled exception", exc_info=KeyError("x"))
    assert [(r.name, r.levelno, r.exc_info is not None) for r in caplog.records] == [
        ("aiohttp.server", logging.ERROR, True)] * 2
    assert sum(_value(metrics, kind) for kind in BAD_REQUEST_KINDS) == 0
