"""The OpenTelemetry SDK behind :class:`zitops.tracing.Tracer`: spans exported over OTLP/HTTP in batches.

Imported only when tracing is on (:func:`zitops.tracing.make_tracer`); the
``otel`` extra installs what it needs. The SDK itself reads the other
``OTEL_*`` variables (headers, timeout, sampler, batch delays, resource).
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from zitops import __version__

Carrier = dict[str, str]  # as zitops.tracing's, which imports this module: never the other way round
_PROPAGATOR = TraceContextTextMapPropagator()


class OtelTracer:
    """Spans of one process (agent or worker), from its own TracerProvider (the global one is left alone)."""

    enabled = True

    def __init__(self, service: str, endpoint: str | None) -> None:
        attributes = {"service.version": __version__}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = service
        self.provider = TracerProvider(resource=Resource.create(attributes))
        exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces") if endpoint else OTLPSpanExporter()
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("zitops", __version__)

    def start(self, name: str, parent: Any = None, attributes: dict[str, Any] | None = None,
              start_ns: int | None = None, server: bool = False) -> Any:
        """A started span, child of ``parent`` (a span, a carrier) or a new trace's root."""
        if isinstance(parent, dict):
            context = _PROPAGATOR.extract(parent)
        elif parent is not None:
            context = trace.set_span_in_context(parent)
        else:
            context = Context()
        return self.tracer.start_span(name, context=context, attributes=attributes, start_time=start_ns,
                                      kind=trace.SpanKind.SERVER if server else trace.SpanKind.INTERNAL)

    def end(self, span: Any, end_ns: int | None = None, attributes: dict[str, Any] | None = None,
            name: str | None = None) -> None:
        """End ``span``, with last attributes and name."""
        if span is None:
            return
        if attributes:
            span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        if name:
            span.update_name(name)
        span.end(end_time=end_ns)

    def carrier(self, span: Any) -> Carrier:
        """``traceparent`` (and ``tracestate``) of ``span``."""
        out: Carrier = {}
        if span is not None:
            _PROPAGATOR.inject(out, context=trace.set_span_in_context(span))
        return out

    def log_fields(self, span: Any) -> dict[str, str]:
        """The trace id, as 32 hex digits, for log lines."""
        if span is None:
            return {}
        return {"trace_id": format(span.get_span_context().trace_id, "032x")}

    def shutdown(self) -> None:
        """Export what is left, then stop."""
        self.provider.shutdown()
