"""The pool's watchdog rounds: observe the workers, ask the policy, apply its actions.

A part of :class:`zitops.agent.workers.pool.Pool` (a mixin it inherits), kept apart so the
supervisor's process mechanics and the watchdog's rounds each fit one file. What to do is
:mod:`~zitops.agent.workers.watchdog`'s (pure policy); this only observes and applies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from zitops.agent.workers import hot_spare as hot
from zitops.agent.workers import watchdog as policy
from zitops.agent.workers.groups import cards, fullest
from zitops.agent.workers.overlap import OVERLAP_POLICIES, Overlap
from zitops.agent.workers.slots import LIVE_STATES, WorkerSlot, observe
from zitops.agent.workers.spawn import sigkill
from zitops.agent.workers.standby import Standby
from zitops.agent.workers.vram import Vram
from zitops.agent.workers.vram_history import VramHistory
from zitops.config import AgentConfig
from zitops.watchdog_settings import WatchdogSettings
from zitops.worker.protocol import ClearCache, Shutdown, ToWorker


class WatchdogRounds:
    """Liveness and memory rounds, and the kill, recycle and cache-clear actions they lead to."""

    config: AgentConfig
    wd: WatchdogSettings
    slots: list[WorkerSlot]
    overlap: Overlap
    hot: hot.HotSpare
    standby: Standby
    vram: Vram
    vram_history: VramHistory
    _loop: asyncio.AbstractEventLoop | None
    _stopping: bool

    def workers(self) -> list[WorkerSlot]:
        """Every worker process (the pool's)."""
        raise NotImplementedError

    def send(self, slot: WorkerSlot, msg: ToWorker) -> bool:
        """Send to a worker (the pool's)."""
        raise NotImplementedError

    def event(self, kind: str, slot: WorkerSlot | None, reason: str, **extra: Any) -> dict[str, Any]:
        """Record an action (the pool's)."""
        raise NotImplementedError

    def check_liveness(self) -> None:
        """Kill every live worker that stopped heartbeating or overran its job timeout, and every stuck set-up."""
        now = time.monotonic()
        live = [observe(s, now) for s in self.workers()
                if s.process is not None and s.pid is not None and s.state in LIVE_STATES]
        self.apply(policy.liveness_policy(live, self.wd.heartbeat_timeout_s, self.config.profile.queue.job_timeout_s))
        what = {"starting": "worker", "warming": "successor", hot.STARTING: "hot spare"}
        starting = [policy.Starting(s.pid, what[s.state], now, s.spawned_at)
                    for s in self.workers() if s.pid is not None and s.state in what
                    and s.paused_since is None]  # a spare waiting at its build gate is not stuck
        self.apply(policy.startup_policy(starting + self.standby.starting(now), self.wd.startup_timeout_s))

    def check_memory(self) -> None:
        """Read GPU memory (NVML, or the workers' own reports) and apply the memory policy."""
        failed = self.vram.refresh([c for s in self.slots for c in cards(s.gpu, s.group)])  # every card of a group
        if failed is not None:
            self.event("nvml", None, failed)
        self.vram_history.record(self.vram.gpus, self.slots)
        by_index = self.vram.by_index()
        overlapped = {w.gpu for w in self.overlap.workers() if w.gpu is not None}
        now = time.monotonic()
        seen = []
        for s in self.slots:
            if s.serving and s.pid is not None:
                gpu = by_index.get(s.gpu) if s.gpu is not None else None
                if gpu is not None:
                    s.nvml_used_mib = gpu.by_pid.get(s.pid)
                if s.group:
                    gpu = fullest(s.gpu, s.group, by_index)  # a group is as near full as its fullest card
                seen.append(observe(s, now, gpu, s.gpu in overlapped))
        self.apply(policy.memory_policy(seen, self.wd))
        for s in list(self.slots):  # a spare that failed, or did not fit before, is retried here
            self._ensure_hot(s)

    def apply(self, actions: Iterable[policy.Action]) -> None:
        """Carry out the watchdog's actions on the workers they name (by pid)."""
        for action in actions:
            slot = next((s for s in self.workers() if s.pid == action.pid and s.process is not None), None)
            if slot is None:
                if isinstance(action, policy.KillWorker):  # a standby spare stuck in its imports or preload
                    self.standby.kill(action.pid, action.reason)
                continue
            if isinstance(action, policy.KillWorker):
                self.kill(slot, action.reason, action.fail_job)
            elif isinstance(action, policy.RecycleWorker):
                self.recycle(slot, action.reason, kind=action.kind)
            else:
                self.clear_cache(slot)

    def kill(self, slot: WorkerSlot, reason: str, fail_job: bool = False) -> None:
        """SIGTERM a hung worker, then SIGKILL after the grace period; it is replaced on exit.

        ``fail_job``: its job passed its timeout, so that job fails instead of being requeued.
        """
        if slot.process is None or slot.kill_reason is not None or self._loop is None:
            return
        slot.kill_reason, slot.kill_fails_job = reason, fail_job
        slot.down_since, slot.down_reason = time.monotonic(), f"killed: {reason}"
        self.event("kill", slot, reason, job_id=slot.job_id)
        proc = slot.process
        proc.terminate()
        slot.timers.append(self._loop.call_later(self.wd.kill_grace_s, sigkill, proc))

    def recycle(self, slot: WorkerSlot, reason: str, kind: str = "recycle", overlap: bool = True) -> None:
        """Replace a worker: warm a successor first when a second copy fits, else finish, exit, restart."""
        if (not slot.serving or slot.kill_reason is not None
                or slot.id in self.overlap.warming):  # at most one successor per slot
            return
        if (spare := self.hot.take_ready(slot.id)) is not None:
            self.overlap.adopt(slot, spare, reason, kind)
            self._ensure_hot(spare)
            return
        if (overlap and self.wd.overlap_recycle and kind in OVERLAP_POLICIES and self._room(slot)
                and self.overlap.start(slot, reason, kind)):
            return
        slot.state = "recycling"
        slot.down_since, slot.down_reason = time.monotonic(), f"recycled: {reason}"
        self.event("recycle", slot, reason, policy=kind, overlap=False, jobs_done=slot.jobs_done,
                   allocated_mib=slot.memory.allocated_mib if slot.memory else None)
        self.send(slot, Shutdown(reason))

    def _room(self, slot: WorkerSlot, setting: str | bool = True) -> bool:
        free = self.vram.free_mib(slot.gpu) if slot.gpu is not None else None
        return policy.hot_spare_wanted(setting, slot.gpu is not None, free, slot.nvml_used_mib)

    def _ensure_hot(self, slot: WorkerSlot) -> None:
        self.hot.ensure(slot, not self._stopping and self._room(slot, self.wd.hot_spare), time.monotonic())

    def clear_cache(self, slot: WorkerSlot) -> None:
        """Ask an idle worker to return cached allocator blocks, at most once between jobs."""
        # What one clear cannot free (fragmented blocks) a second one will not
        # free either, so wait for the next job before trying again.
        if (slot.idle and slot.clearing is None and slot.memory is not None
                and slot.cleared_after != slot.jobs_done and self.send(slot, ClearCache())):
            slot.clearing = slot.memory.reserved_mib
            slot.cleared_after = slot.jobs_done
