"""Hot spares: a second worker per slot, loaded, warmed and idle, ready to take the slot at once.

A standby spare (:mod:`~zitops.agent.workers.standby`) has only imported torch and
diffusers, so the worker it becomes still loads, compiles and warms the model
(seconds to tens of seconds on a GPU). When the device has room for a second
copy (``watchdog.hot_spare_wanted``), :class:`HotSpare` keeps one more full
worker process per slot: it is started like an overlap successor, sends Ready
after its warm-up, and then waits in state ``spare``, taking no jobs.

When the slot's worker crashes, is killed (hang, stuck set-up) or is recycled
by a policy, the ready spare takes the slot's place in the same event-loop
callback (:func:`zitops.agent.workers.overlap.take_slot`): its process and pipe become
the slot's, the requeued job goes to it, and readiness never drops. A
recycled worker retires exactly as after an overlapped recycle
(:meth:`zitops.agent.workers.overlap.Overlap.adopt`). The pool then builds a new spare
in the background.

A spare's build runs on the serving GPU. With ``watchdog.spare_build: idle``
it is gated: :func:`zitops.agent.workers.spare_gate.spare_gate` (pure policy)
decides from the slot's busy or idle state whether the spare may work, and
this class sends the spare a ``Gate`` whenever the answer changes (the pool
tells it when its slot takes a job or becomes idle). The spare stops at its
next step while the gate is closed (:mod:`zitops.worker.gate`) and says so
(``GateWait``): events ``hot_spare_paused`` and ``hot_spare_resumed``; the
start-up deadline does not count its waits.

A strategy the pool holds: it reaches the pool only through
:class:`zitops.agent.workers.slots.PoolHost`, never by importing it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from zitops.agent.workers import watchdog as policy
from zitops.agent.workers.overlap import take_slot
from zitops.agent.workers.slots import PoolHost, WorkerSlot
from zitops.agent.workers.spare_gate import gated, spare_gate
from zitops.watchdog_settings import WatchdogSettings
from zitops.worker.protocol import Gate, GateWait, Ready

STARTING = "spare_starting"
"""A hot spare loading and warming (the startup deadline covers it)."""

READY = "spare"
"""A hot spare loaded, warmed and idle."""


class HotSpare:
    """At most one hot spare per slot (by slot id), and when each may be rebuilt after a failure."""

    def __init__(self, pool: PoolHost, wd: WatchdogSettings) -> None:
        self.pool = pool
        self.wd = wd
        self.spares: dict[str, WorkerSlot] = {}
        self._started: dict[str, float] = {}  # monotonic, by slot id
        self._failures: dict[str, list[float]] = {}  # monotonic failure times, by slot id
        self.takeovers = 0
        self._idle_since: dict[str, float] = {}  # monotonic, by slot id: since when its worker is idle
        self._asks: dict[str, asyncio.TimerHandle] = {}  # the gate's next look, by slot id

    def workers(self) -> list[WorkerSlot]:
        """The spare processes, beside the pool's slots."""
        return list(self.spares.values())

    def owns(self, slot: WorkerSlot) -> bool:
        """True for a hot spare's process."""
        return self.spares.get(slot.id) is slot

    def ensure(self, slot: WorkerSlot, wanted: bool, now: float) -> None:
        """Start a spare for ``slot`` when the policy wants one, it has none, and no failure backoff runs.

        Not while the slot's worker runs its first job (after a takeover, the requeued one): the
        spare's load would slow exactly that job; the pool asks again when the job is done.
        """
        if (not wanted or slot.id in self.spares or not slot.serving
                or (slot.job_id is not None and slot.jobs_done == 0)):
            return
        recent = policy.deaths_in_window(self._failures.get(slot.id, []), now, self.wd.flap_window_s)
        last = max(self._failures.get(slot.id, [0.0]))
        if recent and now - last < policy.backoff_delay(recent, self.wd.restart_backoff_s,
                                                        self.wd.restart_backoff_max_s):
            return
        spare = WorkerSlot(id=slot.id, gpu=slot.gpu)
        spare.gate = False if gated(self.wd.spare_build) else None  # opened below when the slot is idle
        if not self.pool.start_process(spare):
            self._failures.setdefault(slot.id, []).append(now)
            return
        spare.state = STARTING
        self.spares[slot.id], self._started[slot.id] = spare, now
        self.pool.event("hot_spare_start", slot, "building a hot spare", spare_pid=spare.pid,
                        standby_pid=spare.standby_pid, gated=spare.gate is not None)
        self.slot_changed(slot)

    def slot_changed(self, slot: WorkerSlot) -> None:
        """``slot``'s worker took a job, became idle or went down: open or close its building spare's gate."""
        now = time.monotonic()
        busy = slot.job_id is not None or slot.state == "busy"
        if busy:
            self._idle_since.pop(slot.id, None)
        else:
            self._idle_since.setdefault(slot.id, now)
        ask = self._asks.pop(slot.id, None)
        if ask is not None:
            ask.cancel()
        spare = self.spares.get(slot.id)
        if spare is None or spare.gate is None or spare.state != STARTING:
            return
        decision = spare_gate(self.wd.spare_build, busy, None if busy else now - self._idle_since[slot.id])
        if decision.open != spare.gate and self.pool.send(spare, Gate(decision.open)):
            spare.gate = decision.open
        if decision.ask_again_s is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the pool's loop (never in the agent): the next change asks again
                return
            self._asks[slot.id] = loop.call_later(decision.ask_again_s, self._ask_again, slot.id)

    def _ask_again(self, slot_id: str) -> None:
        self._asks.pop(slot_id, None)
        slot = next((s for s in self.pool.slots if s.id == slot_id), None)  # the slot's current worker
        if slot is not None:
            self.slot_changed(slot)

    def on_gate(self, spare: WorkerSlot, msg: GateWait) -> None:
        """The spare stopped at its closed gate, or went on: an event; its waits are off its start-up deadline."""
        now = time.monotonic()
        if msg.paused:
            spare.paused_since = now
            self.pool.event("hot_spare_paused", spare, "the slot is serving: the spare's build waits",
                            spare_pid=spare.pid, done=msg.done)
            return
        waited = now - spare.paused_since if spare.paused_since is not None else 0.0
        spare.spawned_at += waited
        spare.paused_since = None
        self.pool.event("hot_spare_resumed", spare, "the slot is idle: the spare builds on", spare_pid=spare.pid,
                        done=msg.done, waited_s=round(waited, 3))

    def on_ready(self, spare: WorkerSlot, msg: Ready) -> None:
        """The spare is loaded and warmed: it waits, idle, for a takeover."""
        spare.state, spare.gate, spare.paused_since = READY, None, None
        ask = self._asks.pop(spare.id, None)
        if ask is not None:
            ask.cancel()
        self._failures.pop(spare.id, None)
        self.pool.event("hot_spare_ready", spare, "hot spare loaded and warm", spare_pid=spare.pid,
                        build_s=round(time.monotonic() - self._started.get(spare.id, time.monotonic()), 3),
                        setup_s=round(msg.setup_s, 3), startup_s=msg.startup.get("total_s"))

    def take_ready(self, slot_id: str) -> WorkerSlot | None:
        """Hand out the slot's ready spare (no longer a spare once taken); None when it has none ready."""
        spare = self.spares.get(slot_id)
        if spare is None or spare.state != READY or spare.process is None:
            return None
        del self.spares[slot_id]
        self.takeovers += 1
        return spare

    def take_over(self, old: WorkerSlot, reason: str, old_pid: int | None) -> WorkerSlot | None:
        """``old``'s process is gone: its ready spare takes the slot now; None when it has none ready."""
        spare = self.take_ready(old.id)
        if spare is None:
            return None
        now = time.monotonic()
        down_since = old.down_since
        take_slot(self.pool, old, spare)
        self.pool.event("takeover", spare, reason, old_pid=old_pid, new_pid=spare.pid, gap_s=0.0,
                        recovery_s=round(now - down_since, 3) if down_since is not None else None)
        return spare

    def on_exit(self, spare: WorkerSlot, code: int | None) -> None:
        """A spare exited before any takeover: drop it; it is rebuilt after a backoff."""
        del self.spares[spare.id]
        ask = self._asks.pop(spare.id, None)
        if ask is not None:
            ask.cancel()
        now = time.monotonic()
        self._failures.setdefault(spare.id, []).append(now)
        why = spare.setup_error or spare.kill_reason or spare.last_exit or "exited"
        self.pool.event("hot_spare_failed", spare, f"hot spare exited ({why}); rebuilt after a backoff",
                        was=spare.state, exit_code=code)

    def status(self, enabled: str | bool) -> dict[str, Any]:
        """For /status: the settings, the takeovers so far, and each spare (state, pid, gate, startup)."""
        return {"setting": enabled, "build": self.wd.spare_build, "takeovers": self.takeovers,
                "spares": [{"id": s.id, "gpu": s.gpu, "pid": s.pid, "incarnation": s.incarnation,
                            "state": "ready" if s.state == READY else "paused" if s.paused_since is not None
                            else "starting", "gate": None if s.gate is None else "open" if s.gate else "closed",
                            "startup": s.startup}
                           for s in self.spares.values()]}
