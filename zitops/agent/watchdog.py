"""Health and VRAM policies, and the APScheduler jobs that apply them.

The policies are pure functions of numbers, so they are unit-tested without
processes. :class:`Watchdog` runs them on the agent's event loop. It never
calls nvidia-smi and never resets a GPU: the only remedy for device memory is
to clear a worker's allocator cache or to let the worker process exit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from zitops.agent.dispatcher import Dispatcher


# --- pure policies -----------------------------------------------------------

SUCCESSOR_ROOM_FACTOR = 1.15
"""A successor needs the old worker's NVML-used memory plus this much headroom free."""


def hang_reason(now: float, last_heartbeat: float, heartbeat_timeout_s: float,
                job_started: float | None, job_timeout_s: float) -> str | None:
    """Why a worker counts as hung (no heartbeat, or a job past its timeout), or None."""
    silent = now - last_heartbeat
    if silent > heartbeat_timeout_s:
        return f"no heartbeat for {silent:.1f}s (timeout {heartbeat_timeout_s:g}s)"
    if job_started is not None and now - job_started > job_timeout_s:
        return f"job ran {now - job_started:.1f}s, past its {job_timeout_s:g}s timeout"
    return None


def should_clear_cache(idle: bool, allocated_mib: float, reserved_mib: float, threshold_mib: float) -> bool:
    """Clear the allocator cache only when idle and enough cached memory sits unused."""
    return idle and threshold_mib > 0 and reserved_mib - allocated_mib > threshold_mib


def leak_streak(baseline_mib: float | None, allocated_mib: float, threshold_mib: float, streak: int) -> int:
    """The new count of consecutive jobs that ended above baseline + threshold."""
    if baseline_mib is None:
        return 0
    return streak + 1 if allocated_mib > baseline_mib + threshold_mib else 0


def is_leaking(streak: int, consecutive_jobs: int) -> bool:
    """True when enough jobs in a row ended above the warm baseline."""
    return streak >= consecutive_jobs


def over_high_water(used_mib: float, total_mib: float, high_water_pct: float) -> bool:
    """True when device memory used is at or above the high-water mark."""
    return total_mib > 0 and used_mib / total_mib * 100.0 >= high_water_pct


def recycle_due(jobs_done: int, age_s: float, after_jobs: int, after_hours: float) -> str | None:
    """Why a worker is due for a routine recycle (max-requests style), or None."""
    if after_jobs > 0 and jobs_done >= after_jobs:
        return f"recycle after {after_jobs} jobs"
    if after_hours > 0 and age_s >= after_hours * 3600.0:
        return f"recycle after {after_hours:g} hours"
    return None


def room_for_successor(gpu: bool, free_mib: float | None, worker_used_mib: float | None,
                       factor: float = SUCCESSOR_ROOM_FACTOR) -> bool:
    """True when a second copy of the model fits for an overlapped recycle (always on the CPU)."""
    if not gpu:
        return True
    # Without NVML numbers nobody knows what fits: never overlap blind.
    if free_mib is None or not worker_used_mib:
        return False
    return free_mib >= worker_used_mib * factor


def deaths_in_window(deaths: Iterable[float], now: float, window_s: float) -> int:
    """How many deaths happened in the last ``window_s`` seconds."""
    return sum(1 for t in deaths if now - t <= window_s)


def backoff_delay(recent_deaths: int, base_s: float, max_s: float) -> float:
    """Exponential restart delay: base, 2*base, 4*base ... capped at max."""
    if recent_deaths <= 0:
        return 0.0
    return float(min(base_s * (2 ** (recent_deaths - 1)), max_s))


def flap_limit_hit(recent_deaths: int, flap_limit: int) -> bool:
    """True when a worker died too often to keep restarting it."""
    return recent_deaths >= flap_limit


# --- NVML ---------------------------------------------------------------------


@dataclass(frozen=True)
class GpuMemory:
    """One GPU's memory as NVML sees it, plus usage per process id (MiB)."""

    index: int
    used_mib: float
    total_mib: float
    by_pid: dict[int, float]


class NvmlReader:
    """Reads the workers' GPUs through :class:`zitops.gpu.NvmlMonitor`, opened on first use."""

    def __init__(self) -> None:
        self._monitor: Any = None

    def __call__(self, indices: Iterable[int]) -> list[GpuMemory]:
        """Memory per GPU; raises RuntimeError (with NVML's reason) when unavailable."""
        from zitops.gpu import NvmlMonitor

        if self._monitor is None:
            self._monitor = NvmlMonitor(sorted(set(indices)))
        samples = self._monitor.sample()
        if not self._monitor.available:
            raise RuntimeError(self._monitor.reason or "NVML is not available")
        return [GpuMemory(index=s.index, used_mib=s.used_mib, total_mib=s.total_mib,
                          by_pid={pid: used for pid, used in s.processes.items() if used is not None})
                for s in samples]

    def close(self) -> None:
        """Shut NVML down."""
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None


# --- the scheduled jobs ---------------------------------------------------------


class Watchdog:
    """APScheduler jobs on the agent's event loop: liveness, VRAM, retention, sd_notify."""

    def __init__(self, dispatcher: Dispatcher, read: Callable[[Iterable[int]], list[GpuMemory]] | None = None) -> None:
        self.dispatcher = dispatcher
        self._read = read if read is not None else NvmlReader()
        self.nvml_error: str | None = None
        self.gpus: list[GpuMemory] = []
        self._scheduler: Any = None

    def start(self) -> None:
        """Start the scheduler on the running event loop."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        d = self.dispatcher
        wd = d.config.profile.watchdog
        ttl = d.config.profile.queue.result_ttl_s
        sched = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
        sched.add_job(self.liveness, "interval", seconds=min(1.0, wd.heartbeat_interval_s), id="liveness")
        sched.add_job(self.vram, "interval", seconds=wd.interval_s, id="vram", next_run_time=_soon())
        sched.add_job(self.retention, "interval", seconds=min(max(ttl / 10.0, 1.0), 600.0), id="retention")
        ping = d.notifier_interval_s()
        if ping is not None:
            sched.add_job(self.notify, "interval", seconds=ping, id="notify", next_run_time=_soon())
        sched.start()
        self._scheduler = sched

    def stop(self) -> None:
        """Stop the scheduler (jobs in flight finish)."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None
        close = getattr(self._read, "close", None)
        if close is not None:
            close()

    async def liveness(self) -> None:
        """Kill hung workers (no heartbeat, or a job past its timeout)."""
        self.dispatcher.pool.check_liveness()

    async def retention(self) -> None:
        """Delete finished jobs and their images older than the result TTL."""
        self.dispatcher.expire()

    async def notify(self) -> None:
        """WATCHDOG=1 only while the dispatcher loop and heartbeats are healthy; STATUS= always."""
        self.dispatcher.notify_tick()

    async def vram(self) -> None:
        """Read NVML (or the workers' simulated reports) and apply the memory policies."""
        d = self.dispatcher
        wd = d.config.profile.watchdog
        gpus = [s.gpu for s in d.pool.slots if s.gpu is not None]
        if gpus and self.nvml_error is None:
            try:
                self.gpus = self._read(gpus)
            except Exception as exc:  # no NVML: report once, keep serving
                self.nvml_error = f"nvml unavailable: {exc}"
                self.gpus = []
                d.log_warning(self.nvml_error)
                d.record_event("nvml", None, self.nvml_error)
        elif not gpus and self.nvml_error is None:
            self.nvml_error = "nvml unavailable: no GPU workers (CPU only)"
            d.log_info(self.nvml_error)
        by_index = {g.index: g for g in self.gpus}
        # While two copies share a GPU (an overlapped recycle) its memory is
        # high by design: no high-water recycle there until the old one exits.
        overlapped = {w.gpu for w in d.pool.overlap.workers() if w.gpu is not None}
        now = time.monotonic()
        for slot in d.pool.slots:
            if slot.state not in ("ready", "busy"):
                continue
            g = by_index.get(slot.gpu) if slot.gpu is not None else None
            if g is not None:
                slot.nvml_used_mib = g.by_pid.get(slot.pid or -1)
                used, total = g.used_mib, g.total_mib
            elif slot.memory is not None:
                # No NVML: the worker's own device report (simulated on CPU by
                # the fault engine) takes the same path.
                used, total = slot.memory.device_used_mib, slot.memory.device_total_mib
            else:
                used, total = 0.0, 0.0
            # A worker that has run no job since it started cannot have leaked:
            # recycling it again would only churn (e.g. when another process
            # fills the GPU).
            if slot.jobs_done == 0:
                pass
            elif slot.gpu not in overlapped and over_high_water(used, total, wd.high_water_pct):
                d.pool.recycle(slot, f"high water: GPU memory {used:.0f}/{total:.0f} MiB "
                                     f">= {wd.high_water_pct:g}%", kind="high_water")
                continue
            else:
                why = recycle_due(slot.jobs_done, now - slot.spawned_at, wd.recycle_after_jobs,
                                  wd.recycle_after_hours)
                if why and slot.state == "ready":
                    d.pool.recycle(slot, why, kind="age" if "hours" in why else "jobs")
                    continue
            m = slot.memory
            if m is not None and should_clear_cache(slot.state == "ready" and not slot.clearing,
                                                    m.allocated_mib, m.reserved_mib, wd.idle_cache_clear_mib):
                d.pool.clear_cache(slot)
        d.update_gpu_gauges(self.gpus)


def _soon() -> Any:
    import datetime

    return datetime.datetime.now() + datetime.timedelta(seconds=0.2)
