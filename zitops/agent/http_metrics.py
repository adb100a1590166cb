"""HTTP request metrics in their own Prometheus registry.

The runtime's gauges and counters come from ``Service.metrics_text()``; this
registry holds only what the HTTP layer sees, so the two never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "<unmatched>"


class HttpMetrics:
    """Request counter and latency histogram by route template, method and status."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "zitops_http_requests_total", "HTTP requests by route, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "zitops_http_request_duration_seconds", "HTTP request latency by route, method and status.",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one finished request. ``route`` is a template, never a raw path."""
        labels = (route, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def render(self) -> str:
        """Prometheus exposition text of this registry."""
        return generate_latest(self.registry).decode("utf-8")
