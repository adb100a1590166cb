"""The dispatcher: jobs and their order; implements :class:`zitops.agent.contract.Service`.

It owns the queue (the in-memory order of waiting jobs, restored from the store at start; on a shared store a
:class:`~zitops.agent.dispatch.fleet.Fleet` claims instead), hands jobs to idle workers, and turns what the pool tells
it (results, failures, lost jobs) into job states. It holds, on the agent's one event loop, the parts that do the
rest: the :class:`~zitops.agent.storage.store.Store`, the :class:`~zitops.agent.workers.pool.Pool` (which alone owns
processes and applies the watchdog), the :class:`~zitops.agent.dispatch.results.ResultWriter`, the runtime metrics,
the failure log, the loop's health and sd_notify. Queue cap: ``profile.queue.depth`` counts jobs *waiting*
(queued, not yet running); a submit beyond it raises QueueFull before anything is written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from pathlib import Path
from typing import Any

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.dispatch import reporting
from zitops.agent.dispatch.disk import FreeSpaceFloor
from zitops.agent.dispatch.dispatcher_reports import Reports
from zitops.agent.dispatch.fleet import Fleet
from zitops.agent.dispatch.image_home import ImageHome
from zitops.agent.dispatch.images import Encoder, keep_freed_memory
from zitops.agent.dispatch.job_queue import JobQueue
from zitops.agent.dispatch.outcomes import Outcomes
from zitops.agent.dispatch.pool_events import PoolEvents
from zitops.agent.dispatch.results import ResultWriter
from zitops.agent.dispatch.webhooks import open_webhooks
from zitops.agent.ops.agent_log import AgentLog
from zitops.agent.ops.failure_log import FailureLog
from zitops.agent.ops.job_traces import JobTraces
from zitops.agent.ops.loop_health import LoopHealth
from zitops.agent.ops.notify import SystemdNotify
from zitops.agent.ops.runtime_metrics import RuntimeMetrics
from zitops.agent.ops.schedule import Periodic, Schedule
from zitops.agent.progress import ProgressBoard
from zitops.agent.storage.fleet_store import shared
from zitops.agent.storage.store import Store, open_store
from zitops.agent.storage.store_errors import Unsaved
from zitops.agent.workers.pool import Pool
from zitops.config import AgentConfig
from zitops.engine.request import GenerationRequest
from zitops.errors import AgentUnavailable, NotFound, QueueFull, StoreUnavailable
from zitops.gpu import worker_devices
from zitops.logbook.failures import FailureStore
from zitops.sdnotify import Notifier
from zitops.worker.protocol import (
    STEER_CANCEL,
    STEER_PREVIEW,
    Job,
    Steer,
)

TICK_S = 0.2
"""The dispatcher loop's period; sd_notify pings stop when it stops ticking."""

ENCODE_SETTLE_S = 2.0
"""How long close() waits for encodes still pending (drain has already waited for them)."""


class Dispatcher(PoolEvents, Reports):
    """Jobs in, workers out: the Service the HTTP layer talks to (its PoolListener methods in
    :mod:`~zitops.agent.dispatch.pool_events`, its reports in :mod:`~zitops.agent.dispatch.dispatcher_reports`)."""

    def __init__(self, config: AgentConfig, *, notifier: Any = None, failures: FailureStore | None = None,
                 gpus: list[int | None] | None = None, store: Store | None = None, traces: JobTraces | None = None) -> None:
        self.config = config
        store = store if store is not None else open_store(config)
        self.output_dir = Path(config.paths.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.traces = traces if traces is not None else JobTraces()  # the composition root's, when tracing is on
        self.log = AgentLog(trace_of=self.traces.trace_id)
        self.metrics = RuntimeMetrics(config.profile.queue.depth)
        self.failures = failures if failures is not None else FailureStore(
            Path(config.paths.state_dir), Path(config.paths.log_dir))
        fleet_store = shared(store)
        self.failure_log = FailureLog(self.failures, config.profile.name, self.log,
                                      fleet_store.agent_id if fleet_store is not None else None)
        self.fleet = None if fleet_store is None else Fleet(fleet_store, config, self.output_dir, self.log,
            self.failure_log, self._wake, lambda: self._waiters, self.dispatch, lambda: self.readiness()[0])
        self.store: Store = store if self.fleet is None else self.fleet.store
        self.pool = Pool(config, gpus if gpus is not None else worker_devices(config.gpus), self)
        self.notify = SystemdNotify(notifier if notifier is not None else Notifier(), self.log)
        self.health = LoopHealth(self.log, self.failure_log)
        self._queue = JobQueue()  # waiting jobs: highest priority first, FIFO within a level
        self.unsaved = Unsaved()  # jobs failed in memory whose state the store refused (a full disk)
        self.floor = FreeSpaceFloor([Path(config.paths.state_dir), self.output_dir], config.profile.disk.min_free_mib)
        self.fatal = asyncio.Event()  # set when the pool gives up on every slot: the agent exits (server.py)
        self.outcomes = Outcomes(self.store, self.metrics, self.log, self.failure_log, self.unsaved,
                                 finished=self._finished, forget=self._forget,  # a fleet's queue is the store:
                                 requeue_first=self._queue.appendleft if self.fleet is None else self.fleet.requeued)
        self.images = ImageHome(config, self.store, self.output_dir, self.log, self.fleet)
        self.results = ResultWriter(self.output_dir, self.store, self.metrics, self.log, self.failure_log,
                                    self._finished, lambda job_id: job_id in self._waiters,
                                    self.outcomes.store_failed, objects=self.images.objects,
                                    upload=None if self.fleet is None or self.images.objects else self.fleet.store.upload,
                                    traces=self.traces, attempt_of=self.fleet.store.attempt if self.fleet else None)
        # A waited-for job's monotonic stage marks in this process, once (Server-Timing; http_metrics).
        self.stage_marks = self.results.stage_marks
        self.webhooks = open_webhooks(config.webhooks, store, self.metrics.webhooks, self.log, self.failure_log,
                                      self.images.hook_links)
        self.schedule = Schedule()
        self.progress = ProgressBoard(cpu_only=all(s.gpu is None for s in self.pool.slots))
        self.malloc_tuned = keep_freed_memory()
        self._waiters: dict[str, asyncio.Event] = {}
        self._draining = False
        self._closed = False
        self._started_at = time.time()
        self._tick_task: asyncio.Task[None] | None = None
        self._warm_task: asyncio.Task[None] | None = None
        self._seconds: collections.deque[float] = collections.deque(maxlen=50)
        # Monotonic marks per job in this process (accepted, handed to a worker): the queue stage.
        self._marks: dict[str, dict[str, float]] = {}

    @property
    def encode(self) -> Encoder:
        """The result writer's image encoder (a test seam: tests swap in a slow or failing one)."""
        return self.results.encode

    @encode.setter
    def encode(self, encoder: Encoder) -> None:
        self.results.encode = encoder

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Restore durable jobs, spawn workers, start the loop and the periodic rounds."""
        restored = self.results.recover(self.fleet.agent_id if self.fleet is not None else None)  # held stay
        self._queue.restore([self.store.get(j) for j in restored] if self.fleet is None else [])  # a fleet claims
        if restored:
            self.log("info", "restored queued jobs", count=len(restored))
        self.pool.start()
        self._warm_task = asyncio.create_task(self.results.warm(), name="zitops-encoder-warm")  # beside the workers
        self.health.ticked()
        self._tick_task = asyncio.create_task(self._loop(), name="zitops-dispatcher")
        ttl = self.config.profile.queue.result_ttl_s
        expire = self.expire if self.fleet is None else lambda: asyncio.to_thread(self.expire)
        rounds = [*self.pool.periodic(), Periodic("retention", min(max(ttl / 10.0, 1.0), 600.0), expire),
                  Periodic("deadlines", 1.0, self.fail_overdue)]
        rounds += (self.fleet.start() if self.fleet is not None else []) + self.images.rounds(self.results.objects_round)
        ping = self.notify.interval_s(self.config.profile.watchdog.interval_s)
        if ping is not None:
            rounds.append(Periodic("notify", ping, self.notify_tick, soon=True))
        self.schedule.start(rounds)
        self.webhooks.start()

    async def _loop(self) -> None:
        while True:
            try:
                for record in self.unsaved.flush(self.store.fail):
                    self.log("info", "job failure recorded after a store error", job_id=record.id)
                self.dispatch()
            except Exception as exc:  # recorded once per failing stretch; readiness and WATCHDOG=1 fail meanwhile
                self.health.failed(exc)
            else:
                self.health.ticked()
            await asyncio.sleep(TICK_S)

    async def drain(self, timeout_s: float | None = None) -> dict[str, int]:
        """Stop accepting, let running jobs finish (queued ones stay durable), stop workers."""
        timeout = self.config.profile.queue.drain_timeout_s if timeout_s is None else timeout_s
        self._draining = True
        self.notify.stopping()
        for job_id in self._queue:  # their synchronous waiters get a 503 now (see wait)
            self._wake(job_id)
        self.log("info", "draining", running=self.pool.running(), queued=len(self._queue))
        deadline = time.monotonic() + timeout
        # A finished job is not done until its images are written: wait for those too.
        while (self.pool.running() or self.results.pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.pool.running() + len(self.results.pending)
        if left:
            self.log("warning", "drain timeout: jobs still running are requeued at next start", running=left)
        # Jobs still running now stay "running" in the store and are requeued at the
        # next start; the workers get only the kill grace to exit.
        await self.close(close_store=False, stop_timeout_s=max(self.config.profile.watchdog.kill_grace_s, 1.0))
        return {"running_left": left, "queued_left": len(self._queue)}

    async def close(self, close_store: bool = True, stop_timeout_s: float | None = None) -> None:
        """Stop the periodic rounds, the workers and the loop; close the store unless told not to."""
        if self._closed:
            if close_store:
                self.store.close()
            return
        self._closed = True
        self._draining = True
        self.schedule.stop()
        if self.fleet is not None:
            await self.fleet.close()
        await self.webhooks.close()
        await self.pool.stop(self.config.profile.watchdog.kill_grace_s + 5.0 if stop_timeout_s is None
                             else stop_timeout_s)
        await self.results.settle(ENCODE_SETTLE_S)
        if (task := self._tick_task) is not None:
            self._tick_task = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for ev in self._waiters.values():
            ev.set()
        if close_store:
            self.store.close()

    # --- dispatching -------------------------------------------------------------

    def dispatch(self) -> None:
        """The loop's step: hand waiting jobs, oldest first, to idle workers."""
        if self._draining:
            return
        for slot in self.pool.slots:
            while slot.idle and (record := self._next(slot.id)) is not None:
                job = Job(record.id, record.request.to_dict(), record.attempts, self.traces.handed(record.id, slot.id))
                handed = time.monotonic()  # before the send: the worker may start before it returns
                if not self.pool.assign(slot, job):
                    self.store.requeue(record.id, record.error or "", uncount=True)
                    if self.fleet is None:
                        self._queue.appendleft(record.id)
                    break
                self._marks.setdefault(record.id, {})["handed"] = handed
                self.progress.started(record.id, record.request, slot.gpu is None)
                wanted = self.progress.get(record.id)
                if wanted is not None and wanted.wants_preview:
                    self.pool.send(slot, Steer(record.id, STEER_PREVIEW))
                self.log("info", "job started", job_id=record.id, worker_id=slot.id, attempt=record.attempts)

    def _next(self, worker: str) -> JobRecord | None:
        """The next job started on ``worker``: this agent's queue, or a claim on the fleet's."""
        if self.fleet is not None:
            return self.fleet.claim(worker)
        while self._queue:
            job_id = self._queue.popleft()
            try:
                if self.store.get(job_id).status is JobStatus.QUEUED:  # else cancelled while waiting
                    return self.store.start(job_id, worker)
            except NotFound:
                continue
            except StoreUnavailable:  # it stays first in line, queued in the store; the loop records why
                self._queue.appendleft(job_id)
                raise
        return None

    def _finished(self, record: JobRecord) -> None:
        stopped = record.info.get("interrupted_at_step") if isinstance(record.info, dict) else None
        self.progress.finished(record.id, record.status.value, record.error,
                               stopped if isinstance(stopped, int) else None)
        self._forget(record.id, record.status.value)
        self.webhooks.wake(record.id)

    def _forget(self, job_id: str, status: str | None = None) -> None:
        self._marks.pop(job_id, None)
        self.traces.finished(job_id, status)
        self._wake(job_id)

    def _wake(self, job_id: str) -> None:
        if (ev := self._waiters.pop(job_id, None)) is not None:
            ev.set()

    # --- Service -----------------------------------------------------------------

    async def submit(self, request: GenerationRequest, owner: str | None = None,
                     owner_cap: int | None = None, job_id: str | None = None) -> JobRecord:
        """Store and enqueue; QueueFull or AgentUnavailable before anything is written."""
        if self._draining:
            raise AgentUnavailable("the agent is draining (shutting down); retry on another instance or later")
        self.floor.check()
        self.images.refuse_if_down()
        if self.pool.degraded and not any(s.serving for s in self.pool.slots):
            raise AgentUnavailable(f"no worker can run jobs: {self.pool.degraded}")
        depth = self.config.profile.queue.depth
        if self.fleet is not None:  # the store's round trips run off the loop
            record = await self.fleet.submit(request, owner, owner_cap, self._retry_after, job_id)
        elif len(self._queue) >= depth:
            raise QueueFull(f"queue full: {len(self._queue)} jobs waiting (cap {depth}); retry later",
                            retry_after_s=self._retry_after(len(self._queue)))
        else:
            record = self.store.add(request, owner=owner, owner_cap=owner_cap, job_id=job_id)
        self.traces.submitted(record.id, record.request.to_dict())
        self.progress.queued(record.id, request.steps, owner)
        self._marks[record.id] = {"accepted": time.monotonic()}
        if self.fleet is None:  # (a fleet claims it from the store: admit() asked it to look)
            self._queue.add(record)
        self.log("info", "job queued", job_id=record.id, queued=len(self._queue))
        self.dispatch()
        return self.store.get(record.id) if self.fleet is None else record

    async def fail_overdue(self) -> None:
        """The deadline round: fail queued jobs still waiting past their max_queue_s (a fleet's: in SQL, once)."""
        late = await self.fleet.overdue() if self.fleet is not None else self._queue.take_overdue(time.time())
        for job in late:
            self.outcomes.overdue(job)

    def _retry_after(self, waiting: int) -> int:
        return reporting.retry_after(list(self._seconds), self.pool, waiting)

    def steer(self, job_id: str, action: str) -> bool:
        """Send a running job's worker a Steer (cancel, interrupt, preview); False when no worker runs it."""
        slot = next((s for s in self.pool.workers() if s.job_id == job_id), None)
        return slot is not None and self.pool.send(slot, Steer(job_id, action))

    def get(self, job_id: str) -> JobRecord:
        """The job's record (failed, when its failure is not in the store yet), or NotFound."""
        return self.unsaved.overlay(self.store.get(job_id))

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job, or stop a running one between two steps; Conflict when it is final."""
        if self.store.get(job_id).status is JobStatus.RUNNING and self.steer(job_id, STEER_CANCEL):
            # The worker stops at its next step; the job ends cancelled (or finished, if it was done).
            return await self.wait(job_id, self.config.profile.queue.job_timeout_s)
        record = self.store.cancel(job_id)
        with contextlib.suppress(ValueError):
            self._queue.remove(job_id)
        self.metrics.jobs.labels("cancelled").inc()
        self._finished(record)
        return record

    async def wait(self, job_id: str, timeout_s: float) -> JobRecord:
        """Wait until the job is final or the timeout passes; returns the latest record.

        While draining, a job that will not run before exit raises AgentUnavailable
        at once, so synchronous clients get a 503 instead of a dropped connection.
        """
        self.unsaved.check(job_id)
        record = self._unless_stranded(self._look(job_id))
        if record.status.final or timeout_s <= 0:
            return record
        ev = self._waiters.setdefault(job_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout_s)
        self.unsaved.check(job_id)  # the store refused its outcome: a fast 503/507 with the reason
        return self._unless_stranded(self._look(job_id))

    def _look(self, job_id: str) -> JobRecord:
        return self.get(job_id) if self.fleet is None else self.fleet.waited(job_id, self.get)

    def _unless_stranded(self, record: JobRecord) -> JobRecord:
        if not record.status.final and (self._closed or (self._draining and record.status is JobStatus.QUEUED)):
            raise AgentUnavailable(f"the agent is shutting down; job {record.id} stays queued and runs "
                                   f"after the restart: poll GET /v1/jobs/{record.id}")
        return record

    def image(self, job_id: str, index: int) -> tuple[str, bytes]:
        """(file name, bytes) of image ``index`` of a succeeded job, or NotFound; any job of the fleet."""
        return self.images.read(job_id, index)

    def image_links(self, record: JobRecord) -> list[str] | None:
        """Presigned object-store URLs of a succeeded job's images; None: the API's own image routes."""
        return self.images.links(record)

    def expire(self) -> int:
        """Delete expired jobs with their files and objects, then local images past the byte cap (not held ones)."""
        return self.images.expire(keep=self.results.held_names())

    def discard_images(self, names: tuple[str, ...]) -> None:
        """Delete a synchronous job's image files once its response holds them (kept only when asked)."""
        self.images.discard(names)
