"""The runtime's Prometheus metrics (jobs, workers, recoveries, VRAM), in a registry of their own.

The HTTP layer's request metrics live apart, in :mod:`zitops.agent.http.http_metrics`.
The dispatcher counts into :class:`RuntimeMetrics` as things happen and
:meth:`RuntimeMetrics.render` sets the gauges that are read at scrape time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STARTUP_PHASES = ("process_start", "init", "imports", "engine_setup", "total")
"""The worker start-up phases kept per worker (``zitops_worker_startup_seconds``)."""


@dataclass(frozen=True)
class Gauges:
    """What the gauges read at scrape time: the queue, the workers, the devices."""

    queued: int
    running: int
    workers_ready: int
    standby: int
    ready: bool
    devices: list[tuple[str, float, float]]  # (label, used MiB, total MiB)


class RuntimeMetrics:
    """The runtime's counters, histograms and gauges."""

    def __init__(self, queue_cap: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.queue_depth = Gauge("zitops_queue_depth", "Jobs waiting to run", registry=r)
        self.queue_cap = Gauge("zitops_queue_cap", "Most jobs that may wait", registry=r)
        self.queue_cap.set(queue_cap)
        self.jobs_running = Gauge("zitops_jobs_running", "Jobs running on workers", registry=r)
        self.jobs = Counter("zitops_jobs", "Finished job attempts by outcome", ["outcome"], registry=r)
        self.job_seconds = Histogram(
            "zitops_job_seconds", "Worker time per successful job", registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600),
        )
        self.encode_seconds = Histogram(
            "zitops_encode_seconds", "Agent time to encode and write one job's images", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.stage_seconds = Histogram(
            "zitops_job_stage_seconds", "Seconds per successful job in each stage (queue, start, engine, "
            "pack, transfer, encode)", ["stage"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.encodes_pending = Gauge("zitops_encodes_pending", "Finished jobs whose images are being written",
                                     registry=r)
        self.restarts = Counter("zitops_worker_restarts", "Worker restarts by reason", ["reason"], registry=r)
        self.recoveries = Counter("zitops_recoveries", "Recovery actions by kind", ["kind"], registry=r)
        self.workers_ready = Gauge("zitops_workers_ready", "Workers ready or busy", registry=r)
        self.gpu_used = Gauge("zitops_gpu_vram_used_mib", "GPU memory used (NVML, or simulated)", ["gpu"], registry=r)
        self.gpu_total = Gauge("zitops_gpu_vram_total_mib", "GPU memory total (NVML, or simulated)", ["gpu"], registry=r)
        self.allocated = Gauge("zitops_worker_allocated_mib", "Allocator memory in use per worker", ["worker"], registry=r)
        self.reserved = Gauge("zitops_worker_reserved_mib", "Allocator memory reserved per worker", ["worker"], registry=r)
        self.startup = Gauge("zitops_worker_startup_seconds", "Latest worker start-up, by phase",
                             ["worker", "phase"], registry=r)
        self.starts = Counter("zitops_worker_starts", "Workers ready, by how they started (spawn or standby)",
                              ["source"], registry=r)
        self.standby = Gauge("zitops_standby_workers", "Idle pre-imported standby spares", registry=r)
        self.ready = Gauge("zitops_ready", "1 while /readyz says ready, else 0", registry=r)
        self.webhooks = Counter("zitops_webhook_deliveries", "Webhook delivery attempts by outcome "
                                "(delivered, retried, gave_up)", ["outcome"], registry=r)

    def worker_started(self, worker_id: str, startup: dict[str, Any]) -> None:
        """Count a worker's start by its source and keep its start-up phases."""
        self.starts.labels(startup.get("source", "spawn")).inc()
        for phase in STARTUP_PHASES:
            value = startup.get(f"{phase}_s")
            if isinstance(value, (int, float)):
                self.startup.labels(worker_id, phase).set(value)

    def count_event(self, event: dict[str, Any]) -> None:
        """Count a pool action (restart, recycle, crash, kill, recovery ...)."""
        kind = event["kind"]
        if kind == "restart":
            self.restarts.labels(event["reason"]).inc()
        elif kind == "recycle":
            self.recoveries.labels(f"recycle_{event.get('policy', 'recycle')}").inc()
        elif kind in ("crash", "kill", "cache_clear", "flap_limit", "setup_error", "exit", "standby_killed"):
            self.recoveries.labels(kind).inc()
        elif kind == "ready":
            self.recoveries.labels("recovered").inc()
        elif kind in ("handover", "successor_failed"):
            self.recoveries.labels("recycle_overlapped" if kind == "handover" else kind).inc()

    def render(self, gauges: Gauges) -> str:
        """Prometheus text of the registry, with the scrape-time gauges set from ``gauges``."""
        from prometheus_client import generate_latest

        self.queue_depth.set(gauges.queued)
        self.jobs_running.set(gauges.running)
        self.workers_ready.set(gauges.workers_ready)
        self.standby.set(gauges.standby)
        self.ready.set(1 if gauges.ready else 0)
        for label, used, total in gauges.devices:
            self.gpu_used.labels(label).set(used)
            self.gpu_total.labels(label).set(total)
        return generate_latest(self.registry).decode()
