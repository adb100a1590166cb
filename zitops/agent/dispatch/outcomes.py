"""Job outcomes the pool reports: a failed job, a cancelled one, and one whose worker was lost.

Each becomes a job state in the store, a metric, a log line and a failure
record. When the store refuses the state (a full disk, a lost PostgreSQL),
the job is failed in memory (:class:`~zitops.agent.storage.store_errors.Unsaved`),
its waiters wake, and the write is retried by the dispatcher's loop.
The dispatcher owns the queue and the waiters; it hands in what to call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.ops.agent_log import AgentLog
from zitops.agent.ops.failure_log import FailureLog, lost_kind
from zitops.agent.ops.runtime_metrics import RuntimeMetrics
from zitops.agent.storage.store import Store
from zitops.agent.storage.store_errors import Unsaved
from zitops.agent.workers.slots import WorkerSlot
from zitops.errors import NotFound, StoreUnavailable
from zitops.logbook.failures import Action
from zitops.worker.protocol import Failure


class Outcomes:
    """Turns the pool's failure and loss reports into job states (see the module's docstring)."""

    def __init__(self, store: Store, metrics: RuntimeMetrics, log: AgentLog, failure_log: FailureLog,
                 unsaved: Unsaved, *, finished: Callable[[JobRecord], None], forget: Callable[[str], None],
                 requeue_first: Callable[[str], None]) -> None:
        self.store = store
        self.metrics = metrics
        self.log = log
        self.failure_log = failure_log
        self.unsaved = unsaved
        self.finished = finished  # a job reached a final state: progress, marks, waiters
        self.forget = forget  # a job failed in memory only: drop its marks, wake its waiters
        self.requeue_first = requeue_first  # a requeued job goes to the front of this agent's queue

    def failed(self, slot: WorkerSlot, failure: Failure) -> None:
        """Record a job the engine failed (the worker lives on; no retry), or one it stopped on a cancel."""
        assert failure.job_id is not None
        if failure.exc_type == "JobCancelled":
            record = self.store.cancel(failure.job_id, running=True)
            self.metrics.jobs.labels("cancelled").inc()
            self.log("info", "job cancelled while running", job_id=failure.job_id, worker_id=slot.id,
                     reason=failure.message)
            self.finished(record)
            return
        error = f"{failure.exc_type}: {failure.message}"
        try:
            record = self.store.fail(failure.job_id, error)
        except StoreUnavailable as exc:
            self.store_failed(failure.job_id, error, exc)
            return
        self.metrics.jobs.labels("failed").inc()
        self.log("warning", "job failed", job_id=failure.job_id, worker_id=slot.id, error=error)
        kind = "oom" if failure.exc_type == "OutOfMemory" else "job"
        self.failure_log.record(record, failure.exc_type, failure.message, failure.traceback, worker_id=slot.id,
                                vram=failure.memory, action="fail", kind=kind)
        self.finished(record)

    def pool_event(self, event: dict[str, Any]) -> None:
        """Log and count a pool action; a worker lost without a job is a failure record."""
        kind = event["kind"]
        self.metrics.count_event(event)
        level = "info" if kind in ("ready", "restart", "cache_clear", "handover", "retired") else "warning"
        fields = {k: v for k, v in event.items() if k not in ("kind", "worker", "time")}
        self.log(level, f"worker {kind}", worker_id=event.get("worker"), **fields)
        if kind in ("crash", "hang") and event.get("job_id") is None:
            # A retiring worker (overlapped recycle) is not restarted: its
            # successor already serves, so the action taken was the recycle.
            action: Action = "recycle" if event.get("overlap") else "restart"
            self.failure_log.record(None, "WorkerLost", event["reason"], "", worker_id=event.get("worker"),
                                    vram={}, action=action, kind=lost_kind(event["reason"]))

    def overdue(self, job: str | JobRecord) -> None:
        """Fail a job still queued past its deadline (max_queue_s): saying why, counted, with a failure record.

        ``job``: this agent's job id, or the record of a fleet's job the store already failed (fail_overdue).
        """
        try:
            record = self.store.get(job) if isinstance(job, str) else job
            if isinstance(job, str):
                if record.status is not JobStatus.QUEUED:
                    return
                waited = max(0.0, time.time() - record.created_at)
                record = self.store.fail(job, f"max_queue_s: still queued after {waited:.0f} s, past its deadline "
                                              f"of {record.request.extra.get('max_queue_s')} s; not run")
        except NotFound:
            return
        except StoreUnavailable as exc:
            self.store_failed(str(job), "max_queue_s: still queued past its deadline; not run", exc)
            return
        error = record.error or "max_queue_s"
        self.metrics.jobs.labels("failed").inc()
        self.log("warning", "job failed: queued past its deadline", job_id=record.id, error=error)
        self.failure_log.record(record, "QueueDeadline", error, "", worker_id=None, vram={}, action="fail",
                                kind="deadline")
        self.finished(record)

    def lost(self, slot: WorkerSlot, job_id: str, reason: str, retry: bool = True) -> None:
        """Requeue a job whose worker died, once; fail it the second time, or at once when not ``retry``."""
        try:
            self._lost(slot, job_id, reason, retry)
        except StoreUnavailable as exc:  # not requeued: the store cannot say it is queued again
            self.store_failed(job_id, f"worker lost while running this job: {reason}", exc)

    def store_failed(self, job_id: str, error: str, exc: StoreUnavailable) -> None:
        """The store refused a job's final state: fail it in memory, wake its waiters, retry the write."""
        self.unsaved.fail(job_id, error, exc)
        self.metrics.jobs.labels("failed").inc()
        self.log("error", "job failed; the store could not record it", job_id=job_id, error=error, store=str(exc))
        self.failure_log.record(None, type(exc).__name__, f"job {job_id}: {error}; {exc}", "", worker_id=None,
                                vram={}, action="fail", kind="store")
        self.forget(job_id)

    def _lost(self, slot: WorkerSlot, job_id: str, reason: str, retry: bool) -> None:
        try:
            record = self.store.get(job_id)
        except NotFound:
            return
        if record.status is not JobStatus.RUNNING:
            return
        if not retry or record.attempts >= 2:
            why = (f"killed for passing its timeout, not retried: {reason}" if not retry
                   else f"worker crashed twice while running this job: {reason}")
            record = self.store.fail(job_id, why)
            self.metrics.jobs.labels("failed").inc()
            action: Action = "fail"
            self.finished(record)
        else:
            record = self.store.requeue(job_id, f"requeued after: {reason}")
            self.requeue_first(job_id)
            self.metrics.jobs.labels("requeued").inc()
            action = "requeue"
        self.log("warning", f"job {action}", job_id=job_id, worker_id=slot.id, reason=reason)
        memory = {"allocated_mib": slot.memory.allocated_mib, "reserved_mib": slot.memory.reserved_mib} \
            if slot.memory else {}
        self.failure_log.record(record, "WorkerLost", reason, "", worker_id=slot.id, vram=memory, action=action,
                                kind=lost_kind(reason))

