"""The dispatcher: implements :class:`zitops.agent.contract.Service`.

It owns the job store, the in-memory order of queued jobs, the worker pool
and the watchdog, all on the agent's one event loop. The HTTP layer calls it;
the pool tells it about results, failures, memory reports and lost jobs.

Queue cap: ``profile.queue.depth`` counts jobs *waiting* (queued, not yet
running). A submit beyond it raises QueueFull before anything is written.

Images: a worker's Result carries raw pixels. The dispatcher encodes and
writes them on a thread pool (``zitops.agent.images``) while the worker,
already free, runs its next job; the job turns ``succeeded`` only once every
file is in place. Until then it stays ``running`` in SQLite, so an agent that
dies mid-encode requeues it at the next start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from zitops.agent import watchdog as policy
from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.images import Encoder, encode_and_write, keep_freed_memory
from zitops.agent.jobs import JobStore
from zitops.agent.pool import Pool, WorkerSlot
from zitops.agent.watchdog import GpuMemory, Watchdog
from zitops.config import AgentConfig
from zitops.engine.output import encode_image
from zitops.engine.request import GenerationRequest
from zitops.errors import AgentUnavailable, NotFound, QueueFull
from zitops.failures import Action, FailureStore
from zitops.logs import get_logger
from zitops.sdnotify import Notifier
from zitops.worker.protocol import Failure, Job, MemoryReport, Result

TICK_S = 0.2
"""The dispatcher loop's period; sd_notify pings stop when it stops ticking."""

STALL_AFTER_S = 2.0
"""How old the last dispatcher tick may be before the loop counts as stalled."""

TINY_NOTE = "tiny random model: images are noise"

ENCODE_THREADS = 2
"""Jobs encoded at once; each PNG already deflates its strips on threads of its own."""

ENCODE_SETTLE_S = 2.0
"""How long close() waits for encodes still pending (drain has already waited for them)."""

FRESH_JOBS = 8
"""Encoded images kept in memory for synchronous waiters, newest jobs; older ones are read from disk."""

FRESH_BYTES = 256 * 1024 * 1024
"""The most bytes those kept images may take together."""

STAGES = ("queue", "engine", "transfer", "encode")
"""A job's timed stages (``info["timings"]``, ``zitops_job_stage_seconds``); see docs/api.md."""


def resolve_gpus(config: AgentConfig) -> list[int | None]:
    """The device of each worker: one per GPU, or ``[None]`` for one CPU worker."""
    if config.gpus != "auto":
        return list(config.gpus) or [None]
    try:
        from zitops.gpu import probe_gpus

        found = probe_gpus()
    except Exception:  # no NVML, no driver: a CPU worker, never a crash
        return [None]
    gpus: list[int | None] = [g if isinstance(g, int) else int(g.index) for g in found]
    return gpus or [None]


class _Log:
    """The agent's structured logger, dropping empty context fields."""

    def __init__(self) -> None:
        self._log = get_logger("zitops.agent")

    def __call__(self, level: str, msg: str, **ctx: Any) -> None:
        getattr(self._log, level)(msg, **{k: v for k, v in ctx.items() if v is not None})


class _Metrics:
    """The runtime's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.queue_depth = Gauge("zitops_queue_depth", "Jobs waiting to run", registry=r)
        self.queue_cap = Gauge("zitops_queue_cap", "Most jobs that may wait", registry=r)
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
            "zitops_job_stage_seconds", "Seconds per successful job in each stage (queue, engine, transfer, "
            "encode)", ["stage"], registry=r,
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


class Dispatcher:
    """Jobs in, workers out: the Service the HTTP layer talks to."""

    def __init__(self, config: AgentConfig, *, notifier: Any = None, failures: Any = None,
                 gpus: list[int | None] | None = None) -> None:
        self.config = config
        self.store = JobStore(config.paths.state_dir)
        self.output_dir = Path(config.paths.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.pool = Pool(config, gpus if gpus is not None else resolve_gpus(config), self)
        self.watchdog = Watchdog(self)
        self.pool.gpu_free_mib = self._gpu_free_mib
        self.metrics = _Metrics()
        self.metrics.queue_cap.set(config.profile.queue.depth)
        self.log = _Log()
        self.notifier = notifier if notifier is not None else Notifier()
        self.failures = failures if failures is not None else FailureStore(
            Path(config.paths.state_dir), Path(config.paths.log_dir))
        self._queue: collections.deque[str] = collections.deque()
        self._waiters: dict[str, asyncio.Event] = {}
        self._draining = False
        self._closed = False
        self._started_at = time.time()
        self._tick_at = time.monotonic()
        self._stall_until = 0.0
        self._tick_task: asyncio.Task[None] | None = None
        self._ready_sent = False
        self._seconds: collections.deque[float] = collections.deque(maxlen=50)
        self.encode: Encoder = encode_image
        """Test seam: tests swap in a slow or failing encoder; production never changes it."""
        self._encoder = ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="zitops-encode")
        self.malloc_tuned = keep_freed_memory()
        self._encodes: dict[str, asyncio.Task[None]] = {}
        # Monotonic marks per job in this process (accepted, handed to a worker): the queue stage.
        self._marks: dict[str, dict[str, float]] = {}
        self._fresh: collections.OrderedDict[str, tuple[bytes, ...]] = collections.OrderedDict()

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Restore durable jobs, spawn workers, start the loop and the watchdog."""
        restored = self.store.recover()
        self._queue.extend(restored)
        if restored:
            self.log("info", "restored queued jobs", count=len(restored))
        self.pool.start()
        self._tick_at = time.monotonic()
        self._tick_task = asyncio.create_task(self._loop(), name="zitops-dispatcher")
        self.watchdog.start()

    async def _loop(self) -> None:
        while True:
            stalled = self._stall_until - time.monotonic()
            if stalled > 0:
                await asyncio.sleep(stalled)
                continue
            try:
                self._dispatch()
            except Exception:  # logged; the tick is not refreshed, so readiness and WATCHDOG=1 fail
                self.log("exception", "dispatcher loop error")
            else:
                self._tick_at = time.monotonic()
            await asyncio.sleep(TICK_S)

    async def drain(self, timeout_s: float | None = None) -> dict[str, int]:
        """Stop accepting, let running jobs finish (queued ones stay durable), stop workers."""
        timeout = self.config.profile.queue.drain_timeout_s if timeout_s is None else timeout_s
        self._draining = True
        self._notify("stopping")
        for job_id in self._queue:  # their synchronous waiters get a 503 now (see wait)
            ev = self._waiters.pop(job_id, None)
            if ev is not None:
                ev.set()
        self.log("info", "draining", running=self._running(), queued=len(self._queue))
        deadline = time.monotonic() + timeout
        # A finished job is not done until its images are written: wait for those too.
        while (self._running() or self._encodes) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self._running() + len(self._encodes)
        if left:
            self.log("warning", "drain timeout: jobs still running are requeued at next start", running=left)
        # Jobs still running now stay "running" in SQLite and are requeued at the
        # next start; the workers get only the kill grace to exit.
        await self.close(close_store=False, stop_timeout_s=max(self.config.profile.watchdog.kill_grace_s, 1.0))
        return {"running_left": left, "queued_left": len(self._queue)}

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    async def close(self, close_store: bool = True, stop_timeout_s: float | None = None) -> None:
        """Stop the watchdog, the workers and the loop; close the store unless told not to."""
        if self._closed:
            if close_store:
                self.store.close()
            return
        self._closed = True
        self._draining = True
        self.watchdog.stop()
        await self.pool.stop(self.config.profile.watchdog.kill_grace_s + 5.0 if stop_timeout_s is None
                             else stop_timeout_s)
        await self._settle_encodes(ENCODE_SETTLE_S)
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
            self._tick_task = None
        for ev in self._waiters.values():
            ev.set()
        if close_store:
            self.store.close()

    async def _settle_encodes(self, timeout_s: float) -> None:
        """Let pending encodes finish; any still going after ``timeout_s`` leave their job running."""
        if self._encodes:
            _, pending = await asyncio.wait(list(self._encodes.values()), timeout=timeout_s)
            for task in pending:
                task.cancel()  # the job stays "running" in SQLite and is requeued at the next start
        self._encoder.shutdown(wait=False)

    def stall_for_tests(self, seconds: float) -> None:
        """Test and drill hook: freeze the dispatcher loop for ``seconds`` (sd_notify pings stop)."""
        self._stall_until = time.monotonic() + seconds

    # --- dispatching -------------------------------------------------------------

    def _running(self) -> int:
        # A retiring worker's last job counts too: drain waits for it.
        return sum(1 for s in self.pool.workers() if s.job_id is not None)

    def _gpu_free_mib(self, gpu: int) -> float | None:
        g = next((g for g in self.watchdog.gpus if g.index == gpu), None)
        return g.total_mib - g.used_mib if g is not None else None

    def _dispatch(self) -> None:
        if self._draining:
            return
        for slot in self.pool.slots:
            while slot.idle and self._queue:
                job_id = self._queue.popleft()
                try:
                    record = self.store.get(job_id)
                except NotFound:
                    continue
                if record.status is not JobStatus.QUEUED:
                    continue  # cancelled while waiting
                record = self.store.start(job_id, slot.id)
                job = Job(job_id=job_id, request=record.request.to_dict(), attempt=record.attempts)
                if not self.pool.assign(slot, job):
                    self.store.requeue(job_id, record.error or "", uncount=True)
                    self._queue.appendleft(job_id)
                    break
                self._marks.setdefault(job_id, {})["handed"] = time.monotonic()
                self.log("info", "job started", job_id=job_id, worker_id=slot.id, attempt=record.attempts)

    def _finished(self, record: JobRecord) -> None:
        self._marks.pop(record.id, None)
        ev = self._waiters.pop(record.id, None)
        if ev is not None:
            ev.set()

    # --- PoolListener ------------------------------------------------------------

    def on_ready(self, slot: WorkerSlot) -> None:
        """A worker is ready: READY=1 the first time, then dispatch."""
        self.log("info", "worker ready", worker_id=slot.id, pid=slot.pid, incarnation=slot.incarnation)
        if slot.startup:
            self.metrics.starts.labels(slot.startup.get("source", "spawn")).inc()
            for phase in ("process_start", "init", "imports", "engine_setup", "total"):
                value = slot.startup.get(f"{phase}_s")
                if isinstance(value, (int, float)):
                    self.metrics.startup.labels(slot.id, phase).set(value)
        if not self._ready_sent:
            self._ready_sent = True
            self._notify("ready")
            self._notify("status", self.summary())
        self._dispatch()

    def on_result(self, slot: WorkerSlot, result: Result) -> None:
        """Start writing a finished job's images; the worker is free for its next job meanwhile."""
        received = time.monotonic()
        self.metrics.job_seconds.observe(result.seconds)
        self._seconds.append(result.seconds)
        task = asyncio.get_running_loop().create_task(self._write(slot, result, received),
                                                      name=f"zitops-encode-{result.job_id}")
        self._encodes[result.job_id] = task
        self.metrics.encodes_pending.set(len(self._encodes))
        task.add_done_callback(lambda _t: self._encode_done(result.job_id))

    def _encode_done(self, job_id: str) -> None:
        self._encodes.pop(job_id, None)
        self.metrics.encodes_pending.set(len(self._encodes))

    async def _write(self, slot: WorkerSlot, result: Result, received: float) -> None:
        """Encode and write on the thread pool; then the job succeeds, or fails saying why."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            names, blobs = await loop.run_in_executor(self._encoder, encode_and_write, self.output_dir,
                                                      result.job_id, result.images, result.output_format,
                                                      self.encode)
        except Exception as exc:  # the job fails; the worker, already on its next job, is fine
            error = f"writing images to {self.output_dir} failed: {type(exc).__name__}: {exc}"
            record = self.store.fail(result.job_id, error)
            self.metrics.jobs.labels("failed").inc()
            self.log("warning", "job failed", job_id=result.job_id, worker_id=slot.id, error=error)
            self._record_failure(record, type(exc).__name__, error, traceback.format_exc(), slot, {}, "fail")
            self._finished(record)
            return
        done = time.monotonic()
        encode_s = done - started
        self.metrics.encode_seconds.observe(encode_s)
        timings = self._timings(result, received, encode_s, done)
        info = {**result.info, "seconds": round(result.seconds, 3), "encode_s": round(encode_s, 4),
                "worker": slot.id, "timings": timings}
        if result.job_id in self._waiters:
            self._keep_fresh(result.job_id, blobs)
        record = self.store.succeed(result.job_id, names, info)
        self.metrics.jobs.labels("succeeded").inc()
        self.log("info", "job succeeded", job_id=result.job_id, worker_id=slot.id,
                 seconds=round(result.seconds, 3), encode_s=round(encode_s, 4))
        self._finished(record)

    def _timings(self, result: Result, received: float, encode_s: float, done: float) -> dict[str, float | None]:
        """The job's stages in seconds; None where this agent process did not see the stage begin."""
        marks = self._marks.get(result.job_id, {})
        accepted, handed = marks.get("accepted"), marks.get("handed")
        # engine_done_at is the worker's time.monotonic(): CLOCK_MONOTONIC is one
        # clock for the whole host on Linux, so the difference is the hand-over.
        transfer = received - result.engine_done_at if result.engine_done_at else None
        stages: dict[str, float | None] = {
            "queue": handed - accepted if accepted is not None and handed is not None else None,
            "engine": result.engine_s or None,
            "transfer": max(0.0, transfer) if transfer is not None else None,
            "encode": encode_s,
        }
        for stage, seconds in stages.items():
            if seconds is not None:
                self.metrics.stage_seconds.labels(stage).observe(seconds)
        stages["done"] = done - accepted if accepted is not None else None
        return {k: None if v is None else round(v, 6) for k, v in stages.items()}

    def _keep_fresh(self, job_id: str, blobs: tuple[bytes, ...]) -> None:
        """Keep a waited-for job's encoded images for its synchronous route (bounded; oldest go first)."""
        self._fresh[job_id] = blobs
        while len(self._fresh) > FRESH_JOBS or (
                len(self._fresh) > 1 and sum(len(b) for bs in self._fresh.values() for b in bs) > FRESH_BYTES):
            self._fresh.popitem(last=False)

    def encoded_images(self, job_id: str) -> tuple[bytes, ...] | None:
        """A succeeded job's encoded images, once, if still in memory; None: read the files."""
        return self._fresh.pop(job_id, None)

    def on_failure(self, slot: WorkerSlot, failure: Failure) -> None:
        """Record a job the engine failed (the worker lives on; no retry)."""
        assert failure.job_id is not None
        error = f"{failure.exc_type}: {failure.message}"
        record = self.store.fail(failure.job_id, error)
        self.metrics.jobs.labels("failed").inc()
        self.log("warning", "job failed", job_id=failure.job_id, worker_id=slot.id, error=error)
        kind = "oom" if failure.exc_type == "OutOfMemory" else "job"
        self._record_failure(record, failure.exc_type, failure.message, failure.traceback, slot,
                             failure.memory, "fail", kind=kind)
        self._finished(record)

    def on_memory(self, slot: WorkerSlot, report: MemoryReport) -> None:
        """Apply the per-job memory policies (warm baseline, leak), then dispatch."""
        wd = self.config.profile.watchdog
        self.metrics.allocated.labels(slot.id).set(report.allocated_mib)
        self.metrics.reserved.labels(slot.id).set(report.reserved_mib)
        if report.after == "job":
            if slot.baseline_mib is None:
                slot.baseline_mib = report.allocated_mib  # warm: the first report after the first job
            else:
                slot.leak_streak = policy.leak_streak(slot.baseline_mib, report.allocated_mib,
                                                      wd.leak_threshold_mib, slot.leak_streak)
                if policy.is_leaking(slot.leak_streak, wd.leak_consecutive_jobs):
                    self.pool.recycle(slot, (
                        f"leak: allocated {report.allocated_mib:.0f} MiB > warm baseline "
                        f"{slot.baseline_mib:.0f} + {wd.leak_threshold_mib} MiB after "
                        f"{slot.leak_streak} jobs in a row"), kind="leak")
            why = policy.recycle_due(slot.jobs_done, 0.0, wd.recycle_after_jobs, 0.0)
            if why:
                self.pool.recycle(slot, why, kind="jobs")
        self._dispatch()

    def on_job_lost(self, slot: WorkerSlot, job_id: str, reason: str) -> None:
        """Requeue a job whose worker died, once; fail it the second time."""
        try:
            record = self.store.get(job_id)
        except NotFound:
            return
        if record.status is not JobStatus.RUNNING:
            return
        if record.attempts >= 2:
            record = self.store.fail(job_id, f"worker crashed twice while running this job: {reason}")
            self.metrics.jobs.labels("failed").inc()
            action: Action = "fail"
            self._finished(record)
        else:
            record = self.store.requeue(job_id, f"requeued after: {reason}")
            self._queue.appendleft(job_id)
            self.metrics.jobs.labels("requeued").inc()
            action = "requeue"
        self.log("warning", f"job {action}", job_id=job_id, worker_id=slot.id, reason=reason)
        memory = {"allocated_mib": slot.memory.allocated_mib, "reserved_mib": slot.memory.reserved_mib} \
            if slot.memory else {}
        self._record_failure(record, "WorkerLost", reason, "", slot, memory, action, kind=_lost_kind(reason))

    def on_event(self, event: dict[str, Any]) -> None:
        """Log and count a pool action."""
        kind = event["kind"]
        if kind == "restart":
            self.metrics.restarts.labels(event["reason"]).inc()
        elif kind == "recycle":
            self.metrics.recoveries.labels(f"recycle_{event.get('policy', 'recycle')}").inc()
        elif kind in ("crash", "kill", "cache_clear", "flap_limit"):
            self.metrics.recoveries.labels(kind).inc()
        elif kind == "ready":
            self.metrics.recoveries.labels("recovered").inc()
        elif kind in ("handover", "successor_failed"):
            self.metrics.recoveries.labels("recycle_overlapped" if kind == "handover" else kind).inc()
        level = "info" if kind in ("ready", "restart", "cache_clear", "handover", "retired") else "warning"
        fields = {k: v for k, v in event.items() if k not in ("kind", "worker", "time")}
        self.log(level, f"worker {kind}", worker_id=event.get("worker"), **fields)
        if kind in ("crash", "hang") and event.get("job_id") is None:
            # A retiring worker (overlapped recycle) is not restarted: its
            # successor already serves, so the action taken was the recycle.
            action: Action = "recycle" if event.get("overlap") else "restart"
            self._record_failure(None, "WorkerLost", event["reason"], "", None, {}, action,
                                 worker_id=event.get("worker"), kind=_lost_kind(event["reason"]))

    # --- Service -----------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> JobRecord:
        """Store and enqueue; QueueFull or AgentUnavailable before anything is written."""
        if self._draining:
            raise AgentUnavailable("the agent is draining (shutting down); retry on another instance or later")
        if self.pool.degraded and not any(s.state in ("ready", "busy") for s in self.pool.slots):
            raise AgentUnavailable(f"no worker can run jobs: {self.pool.degraded}")
        depth = self.config.profile.queue.depth
        if len(self._queue) >= depth:
            raise QueueFull(f"queue full: {len(self._queue)} jobs waiting (cap {depth}); retry later",
                            retry_after_s=self._retry_after())
        record = self.store.add(request)
        self._marks[record.id] = {"accepted": time.monotonic()}
        self._queue.append(record.id)
        self.log("info", "job queued", job_id=record.id, queued=len(self._queue))
        self._dispatch()
        return self.store.get(record.id)

    def _retry_after(self) -> int:
        mean = sum(self._seconds) / len(self._seconds) if self._seconds else 5.0
        workers = max(1, sum(1 for s in self.pool.slots if s.state in ("ready", "busy")))
        return max(1, min(600, round(mean * (len(self._queue) + 1) / workers)))

    def get(self, job_id: str) -> JobRecord:
        """The job's record, or NotFound."""
        return self.store.get(job_id)

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job; Conflict when it is running or final."""
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
        record = self._unless_stranded(self.store.get(job_id))
        if record.status.final or timeout_s <= 0:
            return record
        ev = self._waiters.setdefault(job_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout_s)
        return self._unless_stranded(self.store.get(job_id))

    def _unless_stranded(self, record: JobRecord) -> JobRecord:
        if not record.status.final and (
                self._closed or (self._draining and record.status is JobStatus.QUEUED)):
            raise AgentUnavailable(f"the agent is shutting down; job {record.id} stays queued and runs "
                                   f"after the restart: poll GET /v1/jobs/{record.id}")
        return record

    def image_path(self, job_id: str, index: int) -> str:
        """Absolute path of image ``index`` of a succeeded job, or NotFound."""
        record = self.store.get(job_id)
        if record.status is not JobStatus.SUCCEEDED:
            raise NotFound(f"job {job_id}: is {record.status.value}; images exist only for succeeded jobs")
        if not 0 <= index < len(record.images):
            raise NotFound(f"job {job_id}: no image {index}; it has {len(record.images)} (0..{len(record.images) - 1})")
        path = (self.output_dir / record.images[index]).resolve()
        if not path.is_file():
            raise NotFound(f"job {job_id}: image {index} has expired")
        return str(path)

    def livez(self) -> bool:
        """The process is up (no GPU call, no I/O)."""
        return True

    def _stale(self) -> list[str]:
        wd = self.config.profile.watchdog
        limit = min(wd.heartbeat_timeout_s, 3 * wd.heartbeat_interval_s)
        now = time.monotonic()
        return [f"worker {s.id}: no heartbeat for {now - s.last_heartbeat:.1f}s"
                for s in self.pool.slots if s.state in ("ready", "busy") and now - s.last_heartbeat > limit]

    def _loop_stalled(self) -> str | None:
        age = time.monotonic() - self._tick_at
        return f"dispatcher loop stalled for {age:.1f}s" if age > STALL_AFTER_S else None

    def readiness(self) -> tuple[bool, list[str]]:
        """(ready, reasons): a worker is loaded, the queue is below cap, heartbeats are fresh."""
        reasons: list[str] = []
        if self._draining:
            reasons.append("draining: not accepting new jobs")
        if self.pool.degraded:
            reasons.append(self.pool.degraded)
        if not any(s.state in ("ready", "busy") for s in self.pool.slots):
            states = ", ".join(f"{s.id}: {s.state}" for s in self.pool.slots)
            reasons.append(f"no worker ready ({states})")
        depth = self.config.profile.queue.depth
        if len(self._queue) >= depth:
            reasons.append(f"queue full: {len(self._queue)} jobs waiting (cap {depth})")
        reasons.extend(self._stale())
        stalled = self._loop_stalled()
        if stalled:
            reasons.append(stalled)
        return (not reasons, reasons)

    def healthy(self) -> bool:
        """True while the dispatcher loop ticks and live workers heartbeat (gates WATCHDOG=1)."""
        return self._loop_stalled() is None and not self._stale()

    def summary(self) -> str:
        """One line for STATUS= and logs."""
        ready = sum(1 for s in self.pool.slots if s.state in ("ready", "busy"))
        text = (f"{ready}/{len(self.pool.slots)} workers ready, {self._running()} running, "
                f"{len(self._queue)}/{self.config.profile.queue.depth} queued")
        if self._draining:
            text += ", draining"
        if self.pool.degraded:
            text += ", DEGRADED: flap limit hit"
        return text

    def status(self) -> dict[str, Any]:
        """The /status JSON."""
        now = time.monotonic()
        cfg = self.config
        model: dict[str, Any] = {"name": cfg.model}
        if cfg.model == "tiny":
            model["note"] = TINY_NOTE
        nvml = {g.index: g for g in self.watchdog.gpus}
        workers = []
        # Warming successors and retiring workers follow the slots as extra entries.
        for s in self.pool.workers():
            m = s.memory
            g = nvml.get(s.gpu) if s.gpu is not None else None
            workers.append({
                "id": s.id, "gpu": s.gpu, "pid": s.pid, "state": s.state, "incarnation": s.incarnation,
                "jobs_done": s.jobs_done, "jobs_total": s.jobs_total, "current_job": s.job_id,
                "job_elapsed_s": round(now - s.job_started, 2) if s.job_started else None,
                "last_heartbeat_age_s": round(now - s.last_heartbeat, 2) if s.process else None,
                "last_exit": s.last_exit,
                "startup": s.startup,
                "vram": {
                    "allocated_mib": m.allocated_mib if m else None,
                    "reserved_mib": m.reserved_mib if m else None,
                    "baseline_mib": s.baseline_mib,
                    "nvml_used_mib": s.nvml_used_mib,
                    "device_used_mib": (g.used_mib if g else (m.device_used_mib if m else None)),
                    "device_total_mib": (g.total_mib if g else (m.device_total_mib if m else None)),
                    "simulated": bool(m.simulated) if m else False,
                },
            })
        ready, reasons = self.readiness()
        return {
            "profile": cfg.profile.name,
            "model": model,
            "engine": cfg.engine.kind,
            "ready": ready,
            "reasons": reasons,
            "degraded": self.pool.degraded,
            "draining": self._draining,
            "workers": workers,
            "standby": self.pool.standby.status(),
            "queue": {"depth": len(self._queue), "cap": cfg.profile.queue.depth, "running": self._running()},
            "uptime_s": round(time.time() - self._started_at, 1),
            "nvml": self.watchdog.nvml_error or "ok",
            "recent_failures": self._recent_failures(),
            "recoveries": list(self.pool.events)[-50:],
        }

    def metrics_text(self) -> str:
        """Prometheus text of the runtime's own registry."""
        from prometheus_client import generate_latest

        m = self.metrics
        m.queue_depth.set(len(self._queue))
        m.jobs_running.set(self._running())
        m.workers_ready.set(sum(1 for s in self.pool.slots if s.state in ("ready", "busy")))
        m.standby.set(len(self.pool.standby.spares))
        if not self.watchdog.gpus:
            for s in self.pool.slots:
                if s.memory is not None and s.memory.device_total_mib:
                    label = "cpu" if s.gpu is None else str(s.gpu)
                    m.gpu_used.labels(label).set(s.memory.device_used_mib)
                    m.gpu_total.labels(label).set(s.memory.device_total_mib)
        return generate_latest(m.registry).decode()

    # --- watchdog hooks -------------------------------------------------------------

    def update_gpu_gauges(self, gpus: list[GpuMemory]) -> None:
        """Set per-GPU gauges from an NVML read."""
        from zitops.agent.vram_history import history_of  # the console's VRAM chart (issue 16)
        history_of(self).record(gpus, self.pool.slots)
        for g in gpus:
            self.metrics.gpu_used.labels(str(g.index)).set(g.used_mib)
            self.metrics.gpu_total.labels(str(g.index)).set(g.total_mib)

    def expire(self) -> int:
        """Delete finished jobs (and their images) older than the result TTL."""
        cutoff = time.time() - self.config.profile.queue.result_ttl_s
        removed = self.store.expire(cutoff)
        for record in removed:
            for name in record.images:
                (self.output_dir / name).unlink(missing_ok=True)
        if removed:
            self.log("info", "expired jobs removed", count=len(removed))
        return len(removed)

    def notifier_interval_s(self) -> float | None:
        """How often to ping systemd (None outside systemd)."""
        if self.notifier is None:
            return None
        interval = self.notifier.watchdog_interval_s()
        if interval:
            return float(interval)
        return self.config.profile.watchdog.interval_s if getattr(self.notifier, "enabled", False) else None

    def notify_tick(self) -> None:
        """WATCHDOG=1 only while healthy; STATUS= every time."""
        # systemd arms the watchdog only after READY=1, so pings start there too.
        if self._ready_sent and self.healthy():
            self._notify("watchdog")
        self._notify("status", self.summary())

    def record_event(self, kind: str, slot: WorkerSlot | None, reason: str) -> None:
        """Add a non-worker event (e.g. NVML unavailable) to the history."""
        self.pool.event(kind, slot, reason)

    def log_info(self, msg: str) -> None:
        """Log at INFO on the agent logger."""
        self.log("info", msg)

    def log_warning(self, msg: str) -> None:
        """Log at WARNING on the agent logger."""
        self.log("warning", msg)

    # --- edges: sd_notify and the failure store ---------------------------------------

    def _notify(self, what: str, *args: Any) -> None:
        if self.notifier is None:
            return
        try:
            getattr(self.notifier, what)(*args)
        except Exception as exc:  # notify is best effort; never stop serving for it
            self.log("warning", "sd_notify failed", error=str(exc))

    def _record_failure(self, record: JobRecord | None, exc_type: str, message: str, tb: str,
                        slot: WorkerSlot | None, vram: dict[str, Any], action: Action,
                        worker_id: str | None = None, kind: str = "job") -> None:
        if self.failures is None:
            return
        req = record.request if record else None
        try:
            self.failures.record(
                job_id=record.id if record else None,
                profile=req.profile if req else self.config.profile.name,
                prompt=req.prompt if req else "",
                params=req.to_dict() if req else {},
                exc_type=exc_type, message=message, traceback=tb,
                worker_id=slot.id if slot else worker_id, vram=vram, action=action, kind=kind,
            )
        except Exception as exc:  # the failure log must never break the dispatcher
            self.log("warning", "could not record failure", error=str(exc))

    def _recent_failures(self) -> list[dict[str, Any]]:
        if self.failures is None:
            return []
        try:
            items = self.failures.recent(10)
        except Exception:  # an unreadable failure log must not break /status
            return []
        return [i if isinstance(i, dict) else getattr(i, "__dict__", {"item": str(i)}) for i in items]




def _lost_kind(reason: str) -> str:
    """The failure-record kind for a lost worker: our hang kill, an outside kill, or a crash."""
    if reason.startswith("killed:"):
        return "hang"
    return "killed" if "killed by" in reason else "crash"
