"""What the pool tells the dispatcher (:class:`~zitops.agent.workers.slots.PoolListener`), as a part of
:class:`~zitops.agent.dispatch.dispatcher.Dispatcher`.

The dispatcher inherits these methods; the attributes below are the dispatcher's own, declared here for the
type checker only.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from zitops.agent.dispatch.fleet import Fleet
from zitops.agent.dispatch.outcomes import Outcomes
from zitops.agent.dispatch.results import ResultWriter
from zitops.agent.ops.agent_log import AgentLog
from zitops.agent.ops.notify import SystemdNotify
from zitops.agent.ops.runtime_metrics import RuntimeMetrics
from zitops.agent.progress import ProgressBoard
from zitops.agent.storage.store import Store
from zitops.agent.workers.slots import WorkerSlot
from zitops.worker.protocol import Failure, MemoryReport, Progress, Result


class PoolEvents:
    """The dispatcher's PoolListener methods: worker ready, results, progress, failures, lost jobs, memory, events."""

    log: AgentLog
    metrics: RuntimeMetrics
    notify: SystemdNotify
    results: ResultWriter
    outcomes: Outcomes
    progress: ProgressBoard
    fleet: Fleet | None
    store: Store
    fatal: asyncio.Event
    _seconds: collections.deque[float]
    _marks: dict[str, dict[str, float]]
    dispatch: Callable[[], None]
    summary: Callable[[], str]

    def on_ready(self, slot: WorkerSlot) -> None:
        """A worker is ready: READY=1 the first time, then dispatch."""
        self.log("info", "worker ready", worker_id=slot.id, pid=slot.pid, incarnation=slot.incarnation)
        if slot.startup:
            self.metrics.worker_started(slot.id, slot.startup)
        self.notify.ready(self.summary())
        self.dispatch()

    def on_result(self, slot: WorkerSlot, result: Result) -> None:
        """Start writing a finished job's images; the worker is free for its next job meanwhile."""
        self._seconds.append(result.seconds)
        self.results.accept(slot.id, result, self._marks.get(result.job_id, {}))

    def encoded_images(self, job_id: str) -> tuple[bytes, ...] | None:
        """A succeeded job's encoded images, once, if still in memory and the job's own; None: read them."""
        fresh = self.results.encoded_images(job_id)
        return fresh if self.fleet is None or fresh is None else self.fleet.ours(job_id, fresh, self.store.get)

    def deliver_inline(self, job_id: str) -> None:
        """A synchronous route sends this job's images and keeps no files (ResultWriter.deliver_inline)."""
        if self.fleet is None:
            self.results.deliver_inline(job_id)

    def release_inline(self, job_id: str) -> None:
        """That route is done with the job."""
        self.results.release_inline(job_id)

    def on_progress(self, slot: WorkerSlot, progress: Progress) -> None:
        """A running job finished a step (on any slot)."""
        self.progress.step(progress.job_id, progress.step, progress.steps, progress.preview)

    def on_failure(self, slot: WorkerSlot, failure: Failure) -> None:
        """A job the engine failed, or stopped on a cancel (see :mod:`zitops.agent.dispatch.outcomes`)."""
        self.outcomes.failed(slot, failure)

    def on_job_lost(self, slot: WorkerSlot, job_id: str, reason: str, retry: bool = True) -> None:
        """A job whose worker died: requeued once, failed the second time or at once when not ``retry``."""
        self.outcomes.lost(slot, job_id, reason, retry)

    def on_memory(self, slot: WorkerSlot, report: MemoryReport) -> None:
        """Keep the worker's allocator gauges, then dispatch (the pool applied its memory policy)."""
        self.metrics.allocated.labels(slot.id).set(report.allocated_mib)
        self.metrics.reserved.labels(slot.id).set(report.reserved_mib)
        self.dispatch()

    def on_event(self, event: dict[str, Any]) -> None:
        """Log and count a pool action."""
        if event["kind"] == "exit":
            self.fatal.set()
        self.outcomes.pool_event(event)
