"""Overlapped recycles: warm a successor worker before retiring the old one.

A policy recycle (leak, after N jobs, after T hours) used to stop the worker
and only then start a fresh one, so a one-GPU agent was not ready for the
model's whole load time. When a second copy fits, :class:`Overlap` spawns the
successor for the same slot first. The old worker keeps serving until the
successor sends Ready; then the successor takes the slot's place in
``pool.slots`` (new jobs go to it) and the old worker, now *retiring*, gets
Shutdown, finishes the job it has, and exits without being replaced. A
successor that fails setup is dropped and the pool falls back to a plain
stop-then-start recycle.

A strategy the pool holds: it reaches the pool only through
:class:`zitops.agent.workers.slots.PoolHost`, never by importing it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from zitops.agent.workers.slots import PoolHost, WorkerSlot
from zitops.worker.protocol import Ready, Shutdown

OVERLAP_POLICIES = ("leak", "jobs", "age")
"""Recycle policies that may overlap; never high water (memory is full), crashes or hangs."""


@dataclass
class _Handover:
    old: WorkerSlot
    new: WorkerSlot
    reason: str
    policy: str
    started: float  # monotonic
    event: dict[str, Any]
    total_at_handover: int = 0


def take_slot(pool: PoolHost, old: WorkerSlot, new: WorkerSlot) -> None:
    """``new``, a loaded process of ``old``'s slot, takes its place in ``pool.slots`` (new jobs go to it)."""
    new.state, new.last_heartbeat = "ready", time.monotonic()
    new.deaths = old.deaths  # the flap limit is per slot, across incarnations
    new.jobs_total = old.jobs_total
    if new.nvml_used_mib is None:  # the same model: until NVML measures it, the old one's use stands in
        new.nvml_used_mib = old.nvml_used_mib
    pool.slots[pool.slots.index(old)] = new


class Overlap:
    """At most one warming successor per slot, and the old workers still retiring."""

    def __init__(self, pool: PoolHost) -> None:
        self.pool = pool
        self.warming: dict[str, _Handover] = {}  # by slot id
        self.retiring: list[_Handover] = []

    def workers(self) -> list[WorkerSlot]:
        """Successor and retiring processes, beside the pool's slots."""
        return [h.new for h in self.warming.values()] + [h.old for h in self.retiring]

    def owns(self, slot: WorkerSlot) -> bool:
        """True for a successor still warming or a retiring old worker."""
        return any(h.new is slot for h in self.warming.values()) or any(h.old is slot for h in self.retiring)

    def start(self, slot: WorkerSlot, reason: str, policy: str) -> bool:
        """Spawn ``slot``'s successor; False when it could not be started (recycle plainly)."""
        new = WorkerSlot(id=slot.id, gpu=slot.gpu)
        if not self.pool.start_process(new):
            return False
        new.state = "warming"
        ev = self.pool.event("recycle", slot, reason, policy=policy, overlap=True, jobs_done=slot.jobs_done,
                             allocated_mib=slot.memory.allocated_mib if slot.memory else None,
                             successor_pid=new.pid)
        self.warming[slot.id] = _Handover(slot, new, reason, policy, time.monotonic(), ev)
        return True

    def on_ready(self, new: WorkerSlot, msg: Ready) -> None:
        """The successor is loaded: it takes the slot; the old worker finishes its job and exits."""
        h = next(h for h in self.warming.values() if h.new is new)
        del self.warming[new.id]
        self._hand_over(h, setup_s=round(msg.setup_s, 3), startup_s=msg.startup.get("total_s"))

    def adopt(self, old: WorkerSlot, new: WorkerSlot, reason: str, policy: str) -> None:
        """A recycle with a ready hot spare: ``new`` takes the slot now; ``old`` retires as after a warm-up."""
        ev = self.pool.event("recycle", old, reason, policy=policy, overlap=True, hot_spare=True,
                             jobs_done=old.jobs_done, successor_pid=new.pid,
                             allocated_mib=old.memory.allocated_mib if old.memory else None)
        self._hand_over(_Handover(old, new, reason, policy, time.monotonic(), ev),
                        setup_s=None, startup_s=(new.startup or {}).get("total_s"))

    def _hand_over(self, h: _Handover, setup_s: float | None, startup_s: float | None) -> None:
        old, pool = h.old, self.pool
        h.total_at_handover = old.jobs_total
        # The old worker was ready or busy until this line and the new one is
        # ready from the next, in one event-loop callback: the slot is never down.
        take_slot(pool, old, h.new)
        old.state = "retiring"
        self.retiring.append(h)
        pool.send(old, Shutdown(f"replaced by pid {h.new.pid}: {h.reason}"))
        h.event["gap_s"] = 0.0
        pool.event("handover", h.new, h.reason, policy=h.policy, overlap=True, gap_s=0.0,
                   warmup_s=round(time.monotonic() - h.started, 3), setup_s=setup_s,
                   old_pid=old.pid, new_pid=h.new.pid, old_job_id=old.job_id, standby_pid=h.new.standby_pid,
                   startup_s=startup_s)
        pool.listener.on_ready(h.new)

    def on_exit(self, slot: WorkerSlot, code: int | None, job: str | None) -> None:
        """An owned process exited: a failed successor (fall back) or a retired old worker."""
        pool = self.pool
        warming = next((h for h in self.warming.values() if h.new is slot), None)
        if warming is not None:
            del self.warming[slot.id]
            if slot.state == "abandoned":
                pool.event("successor_dropped", slot, "the old worker died while its successor warmed",
                           overlap=True)
                return
            why = slot.setup_error or slot.kill_reason or slot.last_exit or "exited"
            pool.event("successor_failed", slot, f"successor failed before Ready: {why}; "
                       "keeping the old worker and recycling it plainly", overlap=True, policy=warming.policy)
            old = warming.old
            if old in pool.slots:
                pool.recycle(old, warming.reason, kind=warming.policy, overlap=False)
            return
        h = next(h for h in self.retiring if h.old is slot)
        self.retiring.remove(h)
        current = next((s for s in pool.slots if s.id == slot.id), None)
        if current is not None:
            current.jobs_total += slot.jobs_total - h.total_at_handover  # the old worker's last job
        if code == 0 and slot.kill_reason is None:
            pool.event("retired", slot, h.reason, overlap=True, jobs_done=slot.jobs_done)
            return
        reason = f"retiring worker {'killed: ' + slot.kill_reason if slot.kill_reason else 'died'} ({slot.last_exit})"
        pool.event("crash", slot, reason, job_id=job, overlap=True)
        if job is not None:
            pool.listener.on_job_lost(slot, job, reason, not slot.kill_fails_job)

    def abandon(self, old: WorkerSlot) -> None:
        """The old worker died while its successor warmed: stop the successor; the pool restarts plainly."""
        h = self.warming.get(old.id)
        if h is None or h.old is not old:
            return
        h.new.state = "abandoned"
        if h.new.process is not None:
            h.new.process.terminate()
