"""The watchdog: health and VRAM policy, observations in, actions out.

Ray Serve's autoscaling policy, for worker health: the pool gathers frozen
observations (:class:`WorkerObservation`, :class:`GpuMemory`), a plain
function here returns the actions (:class:`KillWorker`,
:class:`RecycleWorker`, :class:`ClearWorkerCache`), and the pool applies
them. Nothing here imports the pool, the dispatcher or a process, so every
rule is unit-tested with numbers. The remedies never include nvidia-smi or a
GPU reset: device memory is freed by clearing a worker's allocator cache or
by letting the worker process exit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from zitops.gpu import uuid_hex
from zitops.watchdog_settings import WatchdogSettings

# --- the rules, as functions of numbers -----------------------------------------

SUCCESSOR_ROOM_FACTOR = 1.15
"""A successor needs the old worker's NVML-used memory plus this much headroom free."""


TIMEOUT_MARK = "past its"
"""In a kill reason: the job passed its timeout (the job fails; it is not requeued)."""

PERMANENT_SETUP_ERRORS = frozenset({"ModelError", "ConfigError", "ProfileError"})
"""Setup failures a restart cannot fix (weights missing or incomplete, bad config): never retried."""


def silence_reason(now: float, last_heartbeat: float, heartbeat_timeout_s: float) -> str | None:
    """Why a worker counts as wedged (its heartbeats stopped), or None."""
    silent = now - last_heartbeat
    if silent > heartbeat_timeout_s:
        return f"no heartbeat for {silent:.1f}s (timeout {heartbeat_timeout_s:g}s)"
    return None


def job_timeout_reason(now: float, job_started: float | None, job_timeout_s: float) -> str | None:
    """Why a worker's job counts as overrunning (past queue.job_timeout_s), or None."""
    if job_started is not None and now - job_started > job_timeout_s:
        return f"job ran {now - job_started:.1f}s, {TIMEOUT_MARK} {job_timeout_s:g}s timeout"
    return None


def hang_reason(now: float, last_heartbeat: float, heartbeat_timeout_s: float,
                job_started: float | None, job_timeout_s: float) -> str | None:
    """Why a worker counts as hung (no heartbeat, or a job past its timeout), or None."""
    return (silence_reason(now, last_heartbeat, heartbeat_timeout_s)
            or job_timeout_reason(now, job_started, job_timeout_s))


def startup_overdue(now: float, started: float, startup_timeout_s: float) -> str | None:
    """Why a process still in set-up counts as stuck (past watchdog.startup_timeout_s), or None."""
    if now - started > startup_timeout_s:
        return (f"still setting up after {now - started:.1f}s "
                f"(watchdog.startup_timeout_s {startup_timeout_s:g}s)")
    return None


def setup_error_permanent(exc_type: str | None) -> bool:
    """True for a setup failure a restart cannot fix: the slot stops, and says why, instead of crash-looping."""
    return exc_type in PERMANENT_SETUP_ERRORS


def exit_due(slots: Iterable[tuple[str, bool]]) -> bool:
    """From (state, stopped by a permanent setup error) per slot: True when the agent should exit.

    That is when no slot can run jobs again and at least one stopped at the
    flap limit: a fresh agent process (the supervisor's restart) may recover
    it. Slots stopped by a permanent setup error alone never make it exit,
    since a restart would fail the same way (a crash loop).
    """
    seen = list(slots)
    return bool(seen) and all(state == "error" for state, _ in seen) and any(
        not permanent for _, permanent in seen)


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


def device_mismatch(gpu: int | None, nvml_uuid: str | None, opened: Mapping[str, Any] | None) -> str | None:
    """Why a worker's CUDA device is not NVML's GPU ``gpu`` (the card the watchdog reads for it), or None.

    ``opened`` is the worker's own report (:func:`zitops.worker.preimport.opened_device`).
    None also when nobody can tell: a CPU worker, no NVML UUID, or a worker that opened no CUDA device.
    """
    if gpu is None or not opened:
        return None
    theirs, ours = uuid_hex(opened.get("uuid")), uuid_hex(nvml_uuid)
    if theirs is None or ours is None or theirs == ours:
        return None
    return (f"GPU {gpu}: the worker's CUDA device is {opened.get('uuid')}, but NVML's GPU {gpu}, which the "
            f"watchdog reads for it, is {nvml_uuid} (CUDA_VISIBLE_DEVICES={opened.get('visible')!r}): "
            "its memory readings belong to another worker's card")


def hot_spare_wanted(setting: str | bool, gpu: bool, free_mib: float | None,
                     worker_used_mib: float | None, factor: float = SUCCESSOR_ROOM_FACTOR) -> bool:
    """True when a slot should keep a hot spare: enabled here, and (on a GPU) a second copy fits."""
    if setting is False or (setting == "auto" and not gpu):
        return False
    return room_for_successor(gpu, free_mib, worker_used_mib, factor)


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


# --- observations ----------------------------------------------------------------


@dataclass(frozen=True)
class GpuMemory:
    """One GPU's memory as NVML sees it, plus usage per process id (MiB)."""

    index: int
    used_mib: float
    total_mib: float
    by_pid: dict[int, float]


@dataclass(frozen=True)
class WorkerObservation:
    """One worker process at ``now`` (monotonic seconds), as the pool sees it."""

    pid: int
    state: str
    now: float
    last_heartbeat: float
    job_started: float | None = None
    spawned_at: float = 0.0
    jobs_done: int = 0
    used_mib: float = 0.0  # its device's memory in use (NVML, or the worker's own report)
    total_mib: float = 0.0
    allocated_mib: float | None = None  # the worker's allocator, from its last report
    reserved_mib: float | None = None
    clearing: bool = False  # a cache clear was asked and not yet reported
    overlapped: bool = False  # its GPU also holds a warming successor or a retiring worker


@dataclass(frozen=True)
class Starting:
    """A process still in set-up: a worker, an overlap successor or a standby spare."""

    pid: int
    what: str  # "worker", "successor" or "spare", for the kill's reason
    now: float
    started: float  # monotonic: its spawn, or its assignment when a spare became the worker


@dataclass(frozen=True)
class AfterJob:
    """A worker's allocator report after a job, with its warm baseline and leak streak so far."""

    pid: int
    allocated_mib: float
    baseline_mib: float | None
    leak_streak: int
    jobs_done: int


# --- actions ------------------------------------------------------------------------


@dataclass(frozen=True)
class KillWorker:
    """SIGTERM (then SIGKILL) a hung worker; the pool replaces it on exit."""

    pid: int
    reason: str
    fail_job: bool = False  # its job passed its timeout: fail the job instead of requeueing it


@dataclass(frozen=True)
class RecycleWorker:
    """Replace a worker (overlapped where ``kind`` allows and a second copy fits)."""

    pid: int
    reason: str
    kind: str


@dataclass(frozen=True)
class ClearWorkerCache:
    """Ask an idle worker to hand cached allocator blocks back."""

    pid: int


Action = KillWorker | RecycleWorker | ClearWorkerCache


@dataclass(frozen=True)
class JobVerdict:
    """The memory policy's answer after a job: the new baseline and streak, and what to do."""

    baseline_mib: float
    leak_streak: int
    actions: tuple[Action, ...] = ()


# --- the policies -----------------------------------------------------------------------


def liveness_policy(workers: Iterable[WorkerObservation], heartbeat_timeout_s: float,
                    job_timeout_s: float) -> list[Action]:
    """Kill every live worker that stopped heartbeating or overran its job timeout."""
    actions: list[Action] = []
    for w in workers:
        why = silence_reason(w.now, w.last_heartbeat, heartbeat_timeout_s)
        if why is not None:
            actions.append(KillWorker(w.pid, why))
            continue
        # A job that ran past its timeout would likely do so again: the job
        # fails (with a record) instead of being requeued onto the next worker.
        why = job_timeout_reason(w.now, w.job_started, job_timeout_s)
        if why is not None:
            actions.append(KillWorker(w.pid, why, fail_job=True))
    return actions


def startup_policy(starting: Iterable[Starting], startup_timeout_s: float) -> list[Action]:
    """Kill every worker, successor or spare stuck in set-up past the deadline; its owner replaces it.

    Set-up sends heartbeats from a thread, so a hung mount or driver call
    never trips the heartbeat rule: only this deadline ends it.
    """
    actions: list[Action] = []
    for s in starting:
        why = startup_overdue(s.now, s.started, startup_timeout_s)
        if why is not None:
            actions.append(KillWorker(s.pid, f"{s.what} {why}"))
    return actions


def memory_policy(workers: Iterable[WorkerObservation], wd: WatchdogSettings) -> list[Action]:
    """The periodic VRAM rules for loaded workers: high water, routine recycle, idle cache clear."""
    actions: list[Action] = []
    for w in workers:
        if w.state not in ("ready", "busy"):
            continue
        # A worker that has run no job since it started cannot have leaked:
        # recycling it again would only churn (e.g. when another process
        # fills the GPU).
        if w.jobs_done == 0:
            pass
        # While two copies share a GPU (an overlapped recycle) its memory is
        # high by design: no high-water recycle there until the old one exits.
        elif not w.overlapped and over_high_water(w.used_mib, w.total_mib, wd.high_water_pct):
            actions.append(RecycleWorker(w.pid, f"high water: GPU memory {w.used_mib:.0f}/{w.total_mib:.0f} MiB "
                                                f">= {wd.high_water_pct:g}%", "high_water"))
            continue
        else:
            why = recycle_due(w.jobs_done, w.now - w.spawned_at, wd.recycle_after_jobs, wd.recycle_after_hours)
            if why and w.state == "ready":
                actions.append(RecycleWorker(w.pid, why, "age" if "hours" in why else "jobs"))
                continue
        if (w.allocated_mib is not None and w.reserved_mib is not None and should_clear_cache(
                w.state == "ready" and not w.clearing, w.allocated_mib, w.reserved_mib, wd.idle_cache_clear_mib)):
            actions.append(ClearWorkerCache(w.pid))
    return actions


def after_job_policy(report: AfterJob, wd: WatchdogSettings) -> JobVerdict:
    """The per-job rules: the first report sets the warm baseline; a leak or a job count recycles."""
    actions: list[Action] = []
    if report.baseline_mib is None:
        baseline, streak = report.allocated_mib, report.leak_streak  # warm: the first report after the first job
    else:
        baseline = report.baseline_mib
        streak = leak_streak(baseline, report.allocated_mib, wd.leak_threshold_mib, report.leak_streak)
        if is_leaking(streak, wd.leak_consecutive_jobs):
            actions.append(RecycleWorker(report.pid, (
                f"leak: allocated {report.allocated_mib:.0f} MiB > warm baseline {baseline:.0f} + "
                f"{wd.leak_threshold_mib} MiB after {streak} jobs in a row"), "leak"))
    why = recycle_due(report.jobs_done, 0.0, wd.recycle_after_jobs, 0.0)
    if why:
        actions.append(RecycleWorker(report.pid, why, "jobs"))
    return JobVerdict(baseline, streak, tuple(actions))
