"""The dispatcher's reports: liveness, readiness, health, the STATUS= line, /status, /metrics and the sd_notify
round, as a part of :class:`~zitops.agent.dispatch.dispatcher.Dispatcher` (the numbers come from
:mod:`zitops.agent.dispatch.reporting`).

The dispatcher inherits these methods; the attributes below are the dispatcher's own, declared here for the
type checker only.
"""

from __future__ import annotations

import time
from typing import Any

from zitops.agent.dispatch import reporting
from zitops.agent.dispatch.fleet import Fleet
from zitops.agent.dispatch.image_home import ImageHome
from zitops.agent.dispatch.job_queue import JobQueue
from zitops.agent.dispatch.results import ResultWriter
from zitops.agent.dispatch.webhooks import Webhooks, WebhooksOff
from zitops.agent.ops.failure_log import FailureLog
from zitops.agent.ops.loop_health import LoopHealth
from zitops.agent.ops.notify import SystemdNotify
from zitops.agent.ops.runtime_metrics import Gauges, RuntimeMetrics
from zitops.agent.workers.pool import Pool
from zitops.config import AgentConfig


class Reports:
    """The dispatcher's reports on its queue, pool, fleet and image home, and its sd_notify round."""

    config: AgentConfig
    pool: Pool
    fleet: Fleet | None
    images: ImageHome
    results: ResultWriter
    health: LoopHealth
    failure_log: FailureLog
    webhooks: Webhooks | WebhooksOff
    metrics: RuntimeMetrics
    notify: SystemdNotify
    _queue: JobQueue
    _draining: bool
    _started_at: float

    def _view(self) -> reporting.QueueView:
        return reporting.QueueView(len(self._queue), self.config.profile.queue.depth, self.pool.running(),
                                   self._draining, tuple(self.health.reasons()))

    def livez(self) -> bool:
        """The process is up and will not exit for the flap limit (no GPU call, no I/O)."""
        return self.pool.fatal is None

    def readiness(self) -> tuple[bool, list[str]]:
        """(ready, reasons): a worker is loaded, the queue is below cap, heartbeats are fresh, the loop works."""
        ready, reasons = reporting.readiness(self.pool, self._view())
        reasons += (self.fleet.reasons() if self.fleet is not None else []) + self.images.reasons()
        return not reasons, reasons

    def healthy(self) -> bool:
        """True while the dispatcher loop works and live workers heartbeat (gates WATCHDOG=1)."""
        return not reporting.unhealthy(self.pool, self._view())

    def summary(self) -> str:
        """One line for STATUS= and logs."""
        return reporting.summary(self.pool, self._view())

    def vram_history(self) -> dict[str, Any]:
        """The last hour of VRAM samples per device, kept by the pool's memory check."""
        return self.pool.vram_history.snapshot()

    def status(self) -> dict[str, Any]:
        """The /status JSON."""
        return {**reporting.status(self.config, self.pool, self._view(), uptime_s=time.time() - self._started_at,
                                   recent_failures=self.failure_log.recent(10)),
                "webhooks": self.webhooks.status(), "object_store": self.images.state(),
                "encoder_warm_ms": self.results.encoder_warm}

    def metrics_text(self) -> str:
        """Prometheus text of the runtime's own registry."""
        return self.metrics.render(Gauges(queued=len(self._queue), running=self.pool.running(),
                                          workers_ready=sum(1 for s in self.pool.slots if s.serving),
                                          standby=len(self.pool.standby.spares), ready=self.readiness()[0],
                                          devices=reporting.device_memory(self.pool))
                                  ) + (self.fleet.metrics_text() if self.fleet is not None else "")

    def notify_tick(self) -> None:
        """The sd_notify round: WATCHDOG=1 only while healthy; STATUS= every time."""
        self.notify.tick(self.healthy(), self.summary())
