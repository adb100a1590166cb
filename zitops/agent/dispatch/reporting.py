"""What the agent says about itself: readiness with reasons, the one-line summary, /status.

Plain functions of what the dispatcher and the pool hold, so each report
reads one consistent picture and owns nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from zitops.agent.workers.pool import Pool
from zitops.agent.workers.slots import WorkerSlot, stale_heartbeats
from zitops.config import AgentConfig

TINY_NOTE = "tiny random model: images are noise"


@dataclass(frozen=True)
class QueueView:
    """The dispatcher's side: jobs waiting and running, the cap, whether it drains, its loop's health."""

    waiting: int
    cap: int
    running: int
    draining: bool
    loop_reasons: tuple[str, ...] = ()


def unhealthy(pool: Pool, queue: QueueView) -> list[str]:
    """Why the agent is not healthy (gates WATCHDOG=1): its loop, late heartbeats; [] when healthy."""
    fatal = [pool.fatal] if pool.fatal else []  # about to exit: no more WATCHDOG=1
    return fatal + list(queue.loop_reasons) + stale_heartbeats(pool.slots, pool.wd, time.monotonic())


def readiness(pool: Pool, queue: QueueView) -> tuple[bool, list[str]]:
    """(ready, reasons): a worker is loaded, the queue is below cap, heartbeats are fresh, the loop works."""
    reasons: list[str] = []
    if queue.draining:
        reasons.append("draining: not accepting new jobs")
    if pool.degraded:
        reasons.append(pool.degraded)
    if not any(s.serving for s in pool.slots):
        states = ", ".join(f"{s.id}: {s.state}" for s in pool.slots)
        reasons.append(f"no worker ready ({states})")
    if queue.waiting >= queue.cap:
        reasons.append(f"queue full: {queue.waiting} jobs waiting (cap {queue.cap})")
    reasons.extend(stale_heartbeats(pool.slots, pool.wd, time.monotonic()))
    reasons.extend(queue.loop_reasons)
    return (not reasons, reasons)


def summary(pool: Pool, queue: QueueView) -> str:
    """One line for STATUS= and logs."""
    ready = sum(1 for s in pool.slots if s.serving)
    text = (f"{ready}/{len(pool.slots)} workers ready, {queue.running} running, "
            f"{queue.waiting}/{queue.cap} queued")
    if queue.draining:
        text += ", draining"
    if pool.degraded:
        text += ", DEGRADED: " + ("exiting for a restart" if pool.fatal else pool.degraded)
    return text


def role(pool: Pool, slot: WorkerSlot) -> str:
    """What a /status worker entry is: ``worker`` (the slot's, which takes jobs), ``hot_spare``,
    ``successor`` (an overlapped recycle's, warming) or ``retiring`` (the worker it replaced).

    A slot's hot spare and successor carry the slot's id, so the role, not the id, tells them apart.
    """
    if any(s is slot for s in pool.slots):
        return "worker"
    if pool.hot.owns(slot):
        return "hot_spare"
    return "successor" if slot.state == "warming" else "retiring"


def workers(pool: Pool) -> list[dict[str, Any]]:
    """/status's worker entries: the slots, then warming successors, retiring workers and hot spares."""
    now = time.monotonic()
    nvml = pool.vram.by_index()
    out = []
    for s in pool.workers():
        m = s.memory
        g = nvml.get(s.gpu) if s.gpu is not None else None
        out.append({
            "id": s.id, "role": role(pool, s), "gpu": s.gpu, "pid": s.pid, "state": s.state,
            "incarnation": s.incarnation,
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
    return out


def status(config: AgentConfig, pool: Pool, queue: QueueView, *, uptime_s: float,
           recent_failures: list[dict[str, Any]]) -> dict[str, Any]:
    """The /status JSON."""
    model: dict[str, Any] = {"name": config.model}
    if config.model == "tiny":
        model["note"] = TINY_NOTE
    ready, reasons = readiness(pool, queue)
    return {
        "profile": config.profile.name,
        "model": model,
        "engine": config.engine.kind,
        "ready": ready,
        "reasons": reasons,
        "degraded": pool.degraded,
        "draining": queue.draining,
        "workers": workers(pool),
        "standby": pool.standby.status(),
        "hot_spare": pool.hot.status(pool.wd.hot_spare),
        "queue": {"depth": queue.waiting, "cap": queue.cap, "running": queue.running},
        "uptime_s": round(uptime_s, 1),
        "nvml": pool.vram.error or "ok",
        "recent_failures": recent_failures,
        "recoveries": list(pool.events)[-50:],
    }


def device_memory(pool: Pool) -> list[tuple[str, float, float]]:
    """(device label, used MiB, total MiB): NVML's last read, else the workers' own reports."""
    if pool.vram.gpus:
        return [(str(g.index), g.used_mib, g.total_mib) for g in pool.vram.gpus]
    return [("cpu" if s.gpu is None else str(s.gpu), s.memory.device_used_mib, s.memory.device_total_mib)
            for s in pool.slots if s.memory is not None and s.memory.device_total_mib]


def retry_after(seconds: list[float], pool: Pool, waiting: int) -> int:
    """Retry-After for a full queue: the recent mean job time x the jobs ahead, over the serving workers."""
    mean = sum(seconds) / len(seconds) if seconds else 5.0
    workers = max(1, sum(1 for s in pool.slots if s.serving))
    return max(1, min(600, round(mean * (waiting + 1) / workers)))
