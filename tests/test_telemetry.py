"""Traces, OTLP metrics and the sampled JSON access log, checked with in-memory exporters."""

from __future__ import annotations

import io
import json

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from sidecar.access_log import AccessLog
from sidecar.telemetry import Telemetry
from tests.conftest import Stack, StackFactory
from tests.waiting import until

PATIENT = "/api/v1/patients/424242"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_spans_per_request_with_cache_and_upstream_children(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    telemetry = Telemetry.build(SimpleSpanProcessor(spans), reader)
    # Redis-only: a near-tier hit makes no cache.lookup span (no I/O to trace).
    stack = await make_stack({"CACHE_NEAR_MAX_BYTES": "0"}, telemetry=telemetry)
    await stack.proxy.get(PATIENT, headers={"traceparent": TRACEPARENT})
    await stack.proxy.get(PATIENT, headers={"traceparent": TRACEPARENT})
    finished = spans.get_finished_spans()
    servers = [s for s in finished if s.kind == SpanKind.SERVER]
    assert [s.name for s in servers] == ["GET patient", "GET patient"]
    assert [s.attributes["sidecar.cache"] for s in servers] == ["MISS", "HIT"]  # type: ignore[index]
    assert servers[0].attributes["http.response.status_code"] == 200  # type: ignore[index]
    trace_id = int(TRACEPARENT.split("-")[1], 16)
    assert all(s.context.trace_id == trace_id for s in finished)
    lookups = [s for s in finished if s.name == "cache.lookup"]
    upstream = [s for s in finished if s.kind == SpanKind.CLIENT]
    assert len(lookups) == 2 and len(upstream) == 1
    assert lookups[0].parent.span_id == servers[0].context.span_id  # type: ignore[union-attr]
    for span in finished:
        for value in (span.attributes or {}).values():
            assert "424242" not in str(value) and "alice" not in str(value)
    data = reader.get_metrics_data()
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics  # type: ignore[union-attr]
             for m in sm.metrics}
    assert {"cache_hits", "cache_misses", "cache_latency_seconds"} <= names
    scrape = (await stack.admin.get("/metrics", token=None)).body.decode()
    assert scrape.count("# TYPE cache_hits_total counter") == 1


async def test_traceparent_reaches_the_upstream_as_our_child(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    spans = InMemorySpanExporter()
    stack = await make_stack(telemetry=Telemetry.build(SimpleSpanProcessor(spans),
                                                       InMemoryMetricReader()))
    echo = await stack.proxy.get("/api/v1/echo/headers", token=None,
                                 headers={"traceparent": TRACEPARENT})
    sent = dict((k.lower(), v) for k, v in echo.json()["headers"])["traceparent"]
    client_span = next(s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT)
    assert sent.split("-")[1] == TRACEPARENT.split("-")[1]
    assert sent.split("-")[2] == f"{client_span.context.span_id:016x}"


async def test_without_otlp_the_traceparent_passes_through_untouched(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack()
    assert not stack.rt.telemetry.enabled
    echo = await stack.proxy.get("/api/v1/echo/headers", token=None,
                                 headers={"traceparent": TRACEPARENT})
    assert ["traceparent", TRACEPARENT] in [[k.lower(), v] for k, v in echo.json()["headers"]]


def _access_lines(stack: Stack, sample: float) -> io.BytesIO:
    out = io.BytesIO()
    stack.rt.access_log = AccessLog(sample, stream=out)
    return out


async def test_access_log_is_json_without_paths_ids_or_tokens(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack()
    out = _access_lines(stack, 1.0)
    await stack.proxy.get(PATIENT, headers={"X-Request-Id": "req-1"})
    await stack.proxy.get(PATIENT, headers={"X-Request-Id": "bad id\u00e9"})
    await stack.proxy.get(PATIENT)
    stack.rt.access_log.flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["rule"], x["cache"], x["status"], x["logger"]) for x in lines] == [
        ("patient", "MISS", 200, "sidecar.access"), ("patient", "HIT", 200, "sidecar.access"),
        ("patient", "HIT", 200, "sidecar.access")]
    assert lines[0]["request_id"] == "req-1" and "duration_ms" in lines[0]
    assert lines[1]["request_id"] != lines[2]["request_id"]  # generated, unique
    text = json.dumps(lines)
    assert "424242" not in text and "alice" not in text and "/api" not in text


async def test_access_log_sampling_off_keeps_errors_only(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack()
    out = _access_lines(stack, 0.0)
    await stack.proxy.get(PATIENT)
    await stack.proxy.get(PATIENT, headers={"Cache-Control": "no-store", "X-Stub-Status": "503"})
    stack.rt.access_log.flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [x["status"] for x in lines] == [503]


async def test_access_lines_are_flushed_in_batches_without_a_flush_call(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack()
    out = _access_lines(stack, 1.0)
    await stack.proxy.get(PATIENT)
    async def flushed() -> bool:
        return out.getvalue().count(b"\n") == 1

    await until(flushed, "the timed flush")
