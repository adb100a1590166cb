"""The HTTP request's span: outermost ASGI middleware, installed only when tracing is on.

It continues a caller's W3C ``traceparent``, names the span by the route
template (``POST /v1/jobs``), makes it the parent of any job the request
submits (:data:`zitops.tracing.current_span`), and binds ``trace_id`` to
the request's log lines. Probes and ``/metrics`` get no span.
"""

from __future__ import annotations

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zitops.tracing import Tracer, current_span

UNTRACED = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
"""Probes and scrapes, every few seconds from every kubelet and Prometheus: no spans."""


class TraceMiddleware:
    """One server span per HTTP request."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope inside its span."""
        if scope["type"] != "http" or scope.get("path") in UNTRACED:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        incoming = {k: v for k in ("traceparent", "tracestate") if (v := headers.get(k))}
        method = scope.get("method", "GET")
        span = self.tracer.start(f"{method}", parent=incoming or None, server=True, attributes={
            "http.request.method": method, "url.path": scope.get("path", "")})
        status: dict[str, int] = {}

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        token = current_span.set(span)
        try:
            with structlog.contextvars.bound_contextvars(**self.tracer.log_fields(span)):
                await self.app(scope, receive, send_status)
        finally:
            current_span.reset(token)
            route = getattr(scope.get("route"), "path", None)
            self.tracer.end(span, name=f"{method} {route}" if route else None, attributes={
                "http.route": route, "http.response.status_code": status.get("code", 500)})
