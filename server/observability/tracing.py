"""OpenTelemetry: a tracer provider whose exporter comes from the standard OTEL_* variables (none by default)."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_provider: TracerProvider | None = None
_exporting = False  # some span processor is installed: spans below the request span are worth building


def configure_tracing(extra_processor: SpanProcessor | None = None) -> TracerProvider:
    """Install the provider once: OTLP over HTTP when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set or
    OTEL_TRACES_EXPORTER=otlp. With nothing exporting, only the request span is created (its ids go into logs
    and response headers); team, node and model spans are skipped (see `exporting`)."""
    global _provider, _exporting
    if _provider is None:
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "teamgraph")})
        _provider = TracerProvider(resource=resource)
        exporter_wanted = os.environ.get("OTEL_TRACES_EXPORTER", "").lower()
        if exporter_wanted == "otlp" or (
            exporter_wanted != "none"
            and (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        ):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _exporting = True
        trace.set_tracer_provider(_provider)
    if extra_processor is not None:
        _provider.add_span_processor(extra_processor)
        _exporting = True
    return _provider


def exporting() -> bool:
    """Whether spans go anywhere. A span nobody exports still costs its creation, attributes and context
    bookkeeping on every turn, node and model call; the turn observer skips them when this is false."""
    return _exporting


_tracer: tuple[Any, trace.Tracer] | None = None  # (the provider it came from, the tracer)


def tracer() -> trace.Tracer:
    """Teamgraph's tracer, made once per tracer provider (`get_tracer` builds a new one on every call)."""
    global _tracer
    provider = trace.get_tracer_provider()
    if _tracer is None or _tracer[0] is not provider:
        _tracer = (provider, trace.get_tracer("teamgraph"))
    return _tracer[1]


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
