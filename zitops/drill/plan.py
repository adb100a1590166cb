"""What each drill injects: the fault engine's settings, short thresholds, and the jobs it submits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zitops.errors import InvalidRequest

KINDS = ("leak", "crash", "hang", "oom", "kill")
"""The drills ``zitops drill KIND`` knows."""

DEFAULT_JOBS = {"leak": 8, "crash": 6, "hang": 4, "oom": 4, "kill": 3}
MAX_JOBS = 200

# Short thresholds so each drill takes seconds, not minutes.
FAST_SETS = (
    "generation.width=64", "generation.height=64", "generation.steps=2",
    "watchdog.interval_s=0.5", "watchdog.heartbeat_interval_s=0.2", "watchdog.heartbeat_timeout_s=5",
    "watchdog.kill_grace_s=1", "watchdog.restart_backoff_s=0.2", "watchdog.restart_backoff_max_s=1",
    "queue.job_timeout_s=20", "queue.drain_timeout_s=10",
)
LEAK_MIB, LEAK_THRESHOLD_MIB, LEAK_JOBS = 100.0, 150, 2
CRASH_ON_JOB, HANG_ON_JOB, HANG_TIMEOUT_S = 3, 2, 2.0
OOM_ABOVE_BATCH, OOM_BATCH = 1, 4
KILL_JOB_SECONDS = 1.5

# --real: the real diffusers engine (tiny model) keeps real tensors per job (faults.leak_memory).
# On the host: the allocator's leak rule catches real bytes. On a GPU: job 1 does not leak (the
# warm baseline is read after it), then NVML's high-water line is drawn so that REAL_GPU_JOBS
# leaking jobs cross it and one fewer does not, whatever the worker itself takes (0 to 2
# REAL_GPU_ALLOWANCE_MIB), with the allocator's rule out of reach, so the NVML path must act.
REAL_CPU_MIB, REAL_CPU_THRESHOLD_MIB, REAL_CPU_JOBS = 32.0, 48, 2
REAL_GPU_JOBS = 3
REAL_GPU_ALLOWANCE_MIB = 2048.0
REAL_JOB_SECONDS = 0.6
REAL_NVML_INTERVAL_S = 0.2
OUT_OF_REACH_MIB = 10**7
BACK_TO_BASELINE_MIB = 512.0
"""After the recycle NVML's used memory must be within this of the baseline (issue 13)."""


def real_gpu_leak_mib(total_mib: float) -> float:
    """MiB leaked per job on a card of ``total_mib``: large against the worker's own use, small against the card."""
    return 4096.0 if total_mib >= 64 * 1024 else 1024.0


def real_gpu_high_water_pct(used_mib: float, total_mib: float) -> float:
    """The high-water line: crossed by leaking job REAL_GPU_JOBS, not by leaking job REAL_GPU_JOBS - 1."""
    leak = real_gpu_leak_mib(total_mib)
    line = used_mib + REAL_GPU_ALLOWANCE_MIB + leak * (REAL_GPU_JOBS - 0.5)
    return round(min(99.0, 100.0 * line / total_mib), 2)


@dataclass(frozen=True)
class DrillPlan:
    """What one kind injects, and the jobs it submits."""

    kind: str
    faults: dict[str, Any]
    sets: tuple[str, ...]
    bodies: tuple[dict[str, Any], ...]
    real: bool = False  # real memory (leak --real)
    nvml: bool = False  # a real leak on a GPU: NVML's high-water rule must catch it


def plan_drill(kind: str, jobs: int | None = None, *, real: bool = False,
               gpu_mib: tuple[float, float] | None = None) -> DrillPlan:
    """The faults, thresholds and job bodies of drill ``kind`` (InvalidRequest for an unknown one).

    ``real`` (leak only): real memory; ``gpu_mib`` is NVML's (used, total) on the
    worker's GPU before the agent starts, None on a host without one.
    """
    if kind not in KINDS:
        raise InvalidRequest(f"drill: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if real and kind != "leak":
        raise InvalidRequest(f"--real: only the leak drill has a real mode, not {kind!r}")
    if real:
        return _real_leak(jobs, gpu_mib)
    n = DEFAULT_JOBS[kind] if jobs is None else jobs
    if not 1 <= n <= MAX_JOBS:
        raise InvalidRequest(f"--jobs {n}: give 1..{MAX_JOBS}")
    body: dict[str, Any] = {"prompt": f"drill {kind}", "width": 64, "height": 64, "steps": 2}
    bodies = [dict(body, seed=i) for i in range(n)]
    sets: tuple[str, ...] = FAST_SETS
    faults: dict[str, Any] = {"job_seconds": 0.05}
    if kind == "leak":
        faults["leak_mib_per_job"] = LEAK_MIB
        sets += (f"watchdog.leak_threshold_mib={LEAK_THRESHOLD_MIB}", f"watchdog.leak_consecutive_jobs={LEAK_JOBS}")
    elif kind == "crash":
        faults["crash_on_job"] = min(CRASH_ON_JOB, n)
    elif kind == "hang":
        faults["hang_on_job"] = min(HANG_ON_JOB, n)
        sets += (f"queue.job_timeout_s={HANG_TIMEOUT_S:g}",)
    elif kind == "oom":
        faults["oom_above_batch"] = OOM_ABOVE_BATCH
        # Every other job is a batch above the limit: it must be split and succeed.
        bodies = [dict(b, batch=OOM_BATCH if i % 2 == 0 else 1) for i, b in enumerate(bodies)]
    else:  # kill: jobs long enough to be killed mid-way
        faults["job_seconds"] = KILL_JOB_SECONDS
    return DrillPlan(kind, faults, sets, tuple(bodies))


def _real_leak(jobs: int | None, gpu_mib: tuple[float, float] | None) -> DrillPlan:
    n = (1 + REAL_GPU_JOBS + 3 if gpu_mib else DEFAULT_JOBS["leak"]) if jobs is None else jobs
    if not 1 <= n <= MAX_JOBS:
        raise InvalidRequest(f"--jobs {n}: give 1..{MAX_JOBS}")
    body: dict[str, Any] = {"prompt": "drill leak --real", "width": 64, "height": 64, "steps": 2}
    faults: dict[str, Any] = {"inner": "diffusers", "leak_memory": "real", "job_seconds": REAL_JOB_SECONDS}
    # One worker and its successor only: a hot spare would share the GPU and move NVML's line.
    # A real engine's successor imports torch and diffusers: heartbeats and jobs get real-world deadlines.
    sets: tuple[str, ...] = FAST_SETS + ("watchdog.hot_spare=false", "engine.warmup=false", "engine.compile=false",
                                         "watchdog.heartbeat_timeout_s=30", "queue.job_timeout_s=120")
    if gpu_mib is None:
        faults["leak_mib_per_job"] = REAL_CPU_MIB
        sets += (f"watchdog.leak_threshold_mib={REAL_CPU_THRESHOLD_MIB}",
                 f"watchdog.leak_consecutive_jobs={REAL_CPU_JOBS}")
    else:
        used, total = gpu_mib
        faults["leak_mib_per_job"] = real_gpu_leak_mib(total)
        faults["leak_from_job"] = 2
        sets += (f"watchdog.leak_threshold_mib={OUT_OF_REACH_MIB}", f"watchdog.interval_s={REAL_NVML_INTERVAL_S}",
                 f"watchdog.high_water_pct={real_gpu_high_water_pct(used, total)}")
    return DrillPlan("leak", faults, sets, tuple(dict(body, seed=i) for i in range(n)), real=True,
                     nvml=gpu_mib is not None)
