"""Worker slots, and the two interfaces around the pool that holds them.

A :class:`WorkerSlot` is the pool's record of one worker position and its
current process. :class:`PoolListener` is what the pool tells its owner (the
dispatcher); :class:`PoolHost` is the little a strategy the pool holds (the
overlapped recycle) may ask of the pool. Only plain data and Protocols live
here, so the pool, its strategies and the dispatcher all import this module
and none of them imports another back.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from zitops.agent.workers.watchdog import GpuMemory, WorkerObservation
from zitops.watchdog_settings import WatchdogSettings
from zitops.worker.protocol import Failure, MemoryReport, Progress, Result, ToWorker

LIVE_STATES = ("starting", "ready", "busy", "recycling", "warming", "retiring", "spare_starting", "spare")
"""States of a worker whose process the liveness policy watches."""

SERVING_STATES = ("ready", "busy")
"""States of a worker that counts as loaded (readiness, the memory policy)."""


@dataclass
class WorkerSlot:
    """One worker position (one GPU, or the CPU); survives its process's restarts."""

    id: str
    gpu: int | None
    group: tuple[int, ...] = ()  # a context-parallel group's GPUs (``gpu`` is the first); () for one GPU or the CPU
    incarnation: int = -1  # the first process is incarnation 0
    process: BaseProcess | None = None
    conn: Connection | None = None
    pid: int | None = None
    state: str = "dead"  # starting / ready / busy / recycling / dead / error / stopped;
    # a successor is "warming" until it takes the slot; the worker it replaces is then "retiring";
    # a hot spare is "spare_starting", then "spare" (zitops.agent.workers.hot_spare)
    jobs_done: int = 0  # this incarnation
    jobs_total: int = 0
    job_id: str | None = None
    job_started: float | None = None  # monotonic
    last_heartbeat: float = 0.0  # monotonic
    spawned_at: float = 0.0  # monotonic
    memory: MemoryReport | None = None
    baseline_mib: float | None = None
    leak_streak: int = 0
    nvml_used_mib: float | None = None
    clearing: float | None = None  # reserved MiB when a cache clear was asked
    cleared_after: int = -1  # jobs_done at the last cache clear: once per idle period
    deaths: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=1000))
    down_since: float | None = None  # monotonic; start of an outage, for recovery times
    down_reason: str | None = None
    kill_reason: str | None = None
    kill_fails_job: bool = False  # killed for a job past its timeout: that job fails, not requeued
    setup_error: str | None = None
    setup_error_type: str | None = None  # the exception class the worker's set-up failed with
    permanent_error: bool = False  # "error" from a permanent setup failure, not the flap limit
    last_exit: str | None = None
    startup: dict[str, Any] | None = None  # the start-up phases of this incarnation's Ready
    standby_pid: int | None = None  # set when this incarnation runs in a standby spare
    gate: bool | None = None  # a gated hot spare: its build gate as last sent (None: not gated)
    paused_since: float | None = None  # monotonic; a gated spare waiting at its closed gate
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def begin(self, process: BaseProcess, conn: Connection, now: float) -> None:
        """A new process (incarnation) took this slot: state "starting", every per-process field reset."""
        self.process, self.conn, self.pid = process, conn, process.pid
        self.state, self.jobs_done, self.job_id, self.job_started = "starting", 0, None, None
        self.last_heartbeat = self.spawned_at = now
        self.memory, self.baseline_mib, self.leak_streak, self.clearing = None, None, 0, None
        self.cleared_after = -1
        self.kill_reason = self.setup_error = self.setup_error_type = None
        self.kill_fails_job = self.permanent_error = False
        self.nvml_used_mib = None
        self.startup = None

    @property
    def idle(self) -> bool:
        """Ready and without a job."""
        return self.state == "ready" and self.job_id is None

    @property
    def serving(self) -> bool:
        """Loaded: ready or busy."""
        return self.state in SERVING_STATES


def observe(slot: WorkerSlot, now: float, gpu: GpuMemory | None = None,
            overlapped: bool = False) -> WorkerObservation:
    """What the watchdog sees of a worker with a process; ``gpu`` is NVML's last read of its device."""
    assert slot.pid is not None
    m = slot.memory
    if gpu is not None:
        used, total = gpu.used_mib, gpu.total_mib
    elif m is not None:
        # No NVML: the worker's own device report (simulated on CPU by the
        # fault engine) takes the same path.
        used, total = m.device_used_mib, m.device_total_mib
    else:
        used, total = 0.0, 0.0
    return WorkerObservation(
        pid=slot.pid, state=slot.state, now=now, last_heartbeat=slot.last_heartbeat, job_started=slot.job_started,
        spawned_at=slot.spawned_at, jobs_done=slot.jobs_done, used_mib=used, total_mib=total,
        allocated_mib=m.allocated_mib if m else None, reserved_mib=m.reserved_mib if m else None,
        clearing=bool(slot.clearing), overlapped=overlapped)


def stale_heartbeats(slots: list[WorkerSlot], wd: WatchdogSettings, now: float) -> list[str]:
    """Loaded workers whose heartbeats are late, well before the liveness policy would kill them."""
    limit = min(wd.heartbeat_timeout_s, 3 * wd.heartbeat_interval_s)
    return [f"worker {s.id}: no heartbeat for {now - s.last_heartbeat:.1f}s"
            for s in slots if s.serving and now - s.last_heartbeat > limit]


class PoolListener(Protocol):
    """What the pool tells its owner (the dispatcher)."""

    def on_ready(self, slot: WorkerSlot) -> None:
        """A worker can take jobs."""

    def on_result(self, slot: WorkerSlot, result: Result) -> None:
        """A job succeeded."""

    def on_failure(self, slot: WorkerSlot, failure: Failure) -> None:
        """A job raised inside the worker (the worker lives on)."""

    def on_progress(self, slot: WorkerSlot, progress: Progress) -> None:
        """A running job finished a denoising step."""

    def on_memory(self, slot: WorkerSlot, report: MemoryReport) -> None:
        """A worker reported allocator memory (the pool has applied its memory policy)."""

    def on_job_lost(self, slot: WorkerSlot, job_id: str, reason: str, retry: bool = True) -> None:
        """A worker died or was killed while running ``job_id``; ``retry`` False: fail it, never requeue."""

    def on_event(self, event: dict[str, Any]) -> None:
        """A recovery action happened (for logs and metrics)."""


class PoolHost(Protocol):
    """What a strategy held by the pool may ask of it; the pool implements it."""

    slots: list[WorkerSlot]
    listener: PoolListener

    def start_process(self, slot: WorkerSlot) -> bool:
        """Start a worker process for ``slot``; False when it could not start."""

    def send(self, slot: WorkerSlot, msg: ToWorker) -> bool:
        """Send to a worker; False when its pipe is gone."""

    def event(self, kind: str, slot: WorkerSlot | None, reason: str, **extra: Any) -> dict[str, Any]:
        """Record an action in the pool's history and return it."""

    def recycle(self, slot: WorkerSlot, reason: str, kind: str = "recycle", overlap: bool = True) -> None:
        """Replace a worker."""
