"""OpenTelemetry tracing, off unless asked: one trace per job across the agent and its worker.

Off (the default) is :data:`NO_TRACER`, whose methods do nothing, and
nothing of OpenTelemetry is imported. It is on when the config's
``tracing.endpoint`` is set or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables are (and neither
``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none`` says otherwise);
then :mod:`zitops.tracing_otel` exports spans over OTLP/HTTP. The rest of
the code sees only the :class:`Tracer` protocol: spans are opaque handles, and
a *carrier* is the W3C ``traceparent`` mapping that crosses the HTTP edge and
the worker pipe.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import Any, Protocol

from zitops.errors import ConfigError

Carrier = dict[str, str]
"""W3C trace context headers (``traceparent``, ``tracestate``)."""
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

current_span: ContextVar[Any] = ContextVar("zitops_current_span", default=None)
"""The HTTP request's span while its handler runs (set by the edge's trace middleware)."""


class Tracer(Protocol):
    """What the agent and the worker ask of a tracer; ``parent`` is a span handle, a Carrier or None (a root)."""

    enabled: bool

    def start(self, name: str, parent: Any = None, attributes: dict[str, Any] | None = None,
              start_ns: int | None = None, server: bool = False) -> Any:
        """A started span (None when off)."""

    def end(self, span: Any, end_ns: int | None = None, attributes: dict[str, Any] | None = None,
            name: str | None = None) -> None:
        """End ``span``, setting last attributes (and a final name) first."""

    def carrier(self, span: Any) -> Carrier:
        """``span``'s context as headers for the next process ({} when off)."""

    def log_fields(self, span: Any) -> dict[str, str]:
        """``{"trace_id": ...}`` for log lines inside ``span`` ({} when off)."""

    def shutdown(self) -> None:
        """Flush and stop the exporter."""


class NoTracer:
    """Tracing off: every call is a no-op."""

    enabled = False

    def start(self, name: str, parent: Any = None, attributes: dict[str, Any] | None = None,
              start_ns: int | None = None, server: bool = False) -> Any:
        """No span."""
        return None

    def end(self, span: Any, end_ns: int | None = None, attributes: dict[str, Any] | None = None,
            name: str | None = None) -> None:
        """Nothing to end."""

    def carrier(self, span: Any) -> Carrier:
        """No context to pass on."""
        return {}

    def log_fields(self, span: Any) -> dict[str, str]:
        """No trace id."""
        return {}

    def shutdown(self) -> None:
        """Nothing to flush."""


NO_TRACER = NoTracer()


def wanted(endpoint: str | None, environ: dict[str, str] | None = None) -> bool:
    """Whether tracing is on: a configured endpoint or an OTLP endpoint variable, unless the SDK is disabled."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(endpoint) or any(env.get(name) for name in ENDPOINT_VARS)


def make_tracer(endpoint: str | None, service: str) -> Tracer:
    """The tracer for this process (``service`` names it: zitops-agent, zitops-worker)."""
    if not wanted(endpoint):
        return NO_TRACER
    try:
        from zitops.tracing_otel import OtelTracer
    except ImportError as exc:
        raise ConfigError(f"tracing is on (tracing.endpoint or {ENDPOINT_VARS[1]}), but OpenTelemetry is not "
                          f"installed ({exc.name}): pip install 'zitops[otel]', or unset it") from None
    return OtelTracer(service, endpoint)
