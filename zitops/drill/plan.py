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


@dataclass(frozen=True)
class DrillPlan:
    """What one kind injects, and the jobs it submits."""

    kind: str
    faults: dict[str, Any]
    sets: tuple[str, ...]
    bodies: tuple[dict[str, Any], ...]


def plan_drill(kind: str, jobs: int | None = None) -> DrillPlan:
    """The faults, thresholds and job bodies of drill ``kind`` (InvalidRequest for an unknown one)."""
    if kind not in KINDS:
        raise InvalidRequest(f"drill: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
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
