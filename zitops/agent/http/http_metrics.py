"""HTTP request metrics in their own Prometheus registry, and the synchronous routes' stage timings.

The runtime's gauges and counters come from ``Service.metrics_text()``; this
registry holds only what the HTTP layer sees, so the two never collide.

Stage timings: the synchronous routes' ``Server-Timing`` header and their spliced JSON response.

When the job ran in this agent process and a synchronous route waited on it,
the dispatcher hands over the job's ``time.monotonic()`` marks once
(``Service.stage_marks``), and the stages are the gaps between consecutive
marks, so they add up to ``total`` exactly::

    started (request in, edge middleware)
      accept    request checks, the job stored and queued
    accepted
      queue     waiting for a worker, then handed over (store write, the pipe)
    handed
      start     the worker receives the job and begins its engine call
    engine_started
      engine    the worker's engine call
    engine_done
      pack      in the worker: the pixels into shared memory, the job's info (memory, seeds)
    sent
      transfer  the Result through the pipe, read on the agent's event loop
    received
      encode    PNG/JPEG/WebP encoding and the files (and a fleet's upload)
    encoded
      store     the job marked succeeded in the store
    stored
      wake      the route's waiter wakes up
    respond_from
      respond   base64 and the JSON body, built off the event loop
    total

Otherwise (a fleet job another agent ran, marks evicted) the job's persisted
stages are reported, as far as known, with ``respond`` and ``total``. What no
header sent before the body can hold is the body's own transfer; the
benchmarks measure it on the client (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import Receive, Scope, Send

from zitops.agent.contract import JobRecord, Service

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

        self.client_gone = Counter(
            "zitops_client_gone_total", "Synchronous requests whose client hung up before the job ended, by the "
            "job's state then (queued: cancelled at once; running: stopped at its next step).",
            ["state"], registry=self.registry,
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


# --- per-request stage timings (Server-Timing) ------------------------------------
STARTED_KEY = "zitops_started"
"""``scope["state"]`` key: the edge middleware's time.monotonic() when the request came in."""

MARKS = ("accepted", "handed", "engine_started", "engine_done", "sent", "received", "encoded", "stored")
"""The job's marks between the request's start and ``respond_from``, in order."""

TIMING_STAGES = ("accept", "queue", "start", "engine", "pack", "transfer", "encode", "store", "wake", "respond",
                 "total")
"""The stages a synchronous route reports, in Server-Timing order (docs/api.md)."""

_PERSISTED = ("queue", "start", "engine", "pack", "transfer", "encode")
"""Stages a job keeps in ``info["timings"]``, for the fallback."""


def request_started(request: Request) -> float:
    """When the request came in (the edge middleware's mark), else now."""
    state = request.scope.get("state") or {}
    started = state.get(STARTED_KEY)
    return float(started) if isinstance(started, (int, float)) else time.monotonic()


def stage_timings(record: JobRecord, started: float, respond_from: float,
                  marks: dict[str, float] | None = None) -> dict[str, float]:
    """Seconds per stage for a finished synchronous request (see the module docstring)."""
    now = time.monotonic()
    if marks is not None and all(marks.get(m) for m in MARKS):
        points = [started, *(marks[m] for m in MARKS), respond_from, now]
        stages = {name: max(0.0, b - a) for name, a, b in zip(TIMING_STAGES[:-1], points[:-1], points[1:], strict=True)}
        stages["total"] = now - started
        return stages
    job = record.info.get("timings") if isinstance(record.info, dict) else None
    out: dict[str, float] = {}
    for name in _PERSISTED:
        value = job.get(name) if isinstance(job, dict) else None
        if isinstance(value, (int, float)):
            out[name] = float(value)
    out["respond"] = now - respond_from
    out["total"] = now - started
    return out


def server_timing(stages: dict[str, float]) -> str:
    """A ``Server-Timing`` header value: ``queue;dur=0.4, engine;dur=871.2, ...`` in milliseconds."""
    return ", ".join(f"{name};dur={seconds * 1000.0:.1f}" for name, seconds in stages.items())


def job_marks(service: Service, record: JobRecord) -> dict[str, float] | None:
    """The job's marks in this process, once (None from a Service that keeps none)."""
    take: Callable[[str], dict[str, float] | None] | None = getattr(service, "stage_marks", None)
    return take(record.id) if take is not None else None


class SplicedResponse(Response):
    """A response whose body is sent as its fragments, in order, never joined into one buffer.

    A 1024x1024 image's base64 is about 4 MB; joining it with the JSON
    around it is one more 4 MB copy (and its page faults) per request.
    ``Content-Length`` is the fragments' total, so the body is not chunked.
    """

    def __init__(self, fragments: Sequence[bytes], headers: dict[str, str]) -> None:
        super().__init__(b"", media_type="application/json", headers=headers)
        self.fragments = [f for f in fragments if f]
        self.headers["content-length"] = str(sum(len(f) for f in self.fragments))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the head, then each fragment."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if scope.get("method") == "HEAD" or not self.fragments:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        last = len(self.fragments) - 1
        for n, fragment in enumerate(self.fragments):
            await send({"type": "http.response.body", "body": fragment, "more_body": n < last})
