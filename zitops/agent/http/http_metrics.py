"""HTTP request metrics in their own Prometheus registry.

The runtime's gauges and counters come from ``Service.metrics_text()``; this
registry holds only what the HTTP layer sees, so the two never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 300.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "<unmatched>"


class HttpMetrics:
    """Request counter and latency histogram by route, method and status; stage times of synchronous routes."""

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
        # The issue-7 figure is "overhead": total minus the worker's engine time, per request.
        self.stages = Histogram(
            "zitops_http_stage_seconds", "Synchronous generation requests: seconds per stage (queue, engine, "
            "transfer, encode, respond, total, overhead = total - engine).",
            ["route", "stage"], buckets=STAGE_BUCKETS, registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one finished request. ``route`` is a template, never a raw path."""
        labels = (route, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_stages(self, route: str, stages: dict[str, float]) -> None:
        """Record one synchronous request's stage seconds, plus its overhead (total - engine)."""
        for stage, seconds in stages.items():
            self.stages.labels(route, stage).observe(seconds)
        if "total" in stages and "engine" in stages:
            self.stages.labels(route, "overhead").observe(max(0.0, stages["total"] - stages["engine"]))

    def render(self) -> str:
        """Prometheus exposition text of this registry."""
        return generate_latest(self.registry).decode("utf-8")
