"""OpenTelemetry: request traces, and the seed's metrics over OTLP.

Both are per app (no global providers), exported over OTLP only when the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` is set, and no-ops otherwise. Prometheus stays the one
source of `/metrics`: the OTel meter has only an OTLP reader, so nothing is registered
twice on the scrape. Span attributes name the rule and the outcome, never an id.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.metrics import Meter, NoOpMeter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar.metrics import CACHE_BUCKETS

PROPAGATOR = TraceContextTextMapPropagator()
SERVICE = "identity-cache-sidecar"


class Telemetry:
    """The tracer and the OTLP meter an app uses; built from env or injected by tests."""

    def __init__(self, tracer: Tracer, meter: Meter,
                 providers: tuple[TracerProvider | MeterProvider, ...] = ()) -> None:
        self.tracer = tracer
        self.meter = meter
        self._providers = providers
        self.enabled = not isinstance(tracer, trace.NoOpTracer)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Telemetry:
        env = os.environ if env is None else env
        if not env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return cls(trace.NoOpTracer(), NoOpMeter(SERVICE))
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return cls.build(BatchSpanProcessor(OTLPSpanExporter()),
                         PeriodicExportingMetricReader(OTLPMetricExporter()))

    @classmethod
    def build(cls, spans: SpanProcessor, metrics: MetricReader) -> Telemetry:
        resource = Resource.create({"service.name": SERVICE})
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(spans)
        meter_provider = MeterProvider(
            resource=resource, metric_readers=[metrics],
            # The SDK's default bounds are milliseconds; ours are seconds from 100 µs.
            views=[View(instrument_name="cache_latency_seconds",
                        aggregation=ExplicitBucketHistogramAggregation(CACHE_BUCKETS))])
        return cls(tracer_provider.get_tracer(SERVICE), meter_provider.get_meter(SERVICE),
                   (tracer_provider, meter_provider))

    def shutdown(self) -> None:
        for provider in self._providers:
            provider.shutdown()
