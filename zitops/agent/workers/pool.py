"""The worker supervisor: the one owner of worker processes.

uvicorn's multiprocess supervisor, adapted: one spawned worker per GPU, each with its own Pipe, watched
with ``add_reader`` on the agent's event loop (no polling). A dead worker is restarted with exponential
backoff until its flap limit; a hung one gets SIGTERM, then SIGKILL; a leaking one is recycled, overlapped
with a warm successor when a second copy fits (:mod:`~zitops.agent.workers.overlap`). A slot's loaded hot spare,
when it keeps one, takes over at once instead (:mod:`~zitops.agent.workers.hot_spare`). A new worker starts in a
pre-imported standby spare when the slot has one (:mod:`~zitops.agent.workers.standby`). What to do is the
watchdog's (:mod:`~zitops.agent.workers.watchdog`, pure policy): the pool hands it observations and applies the
actions it returns (its rounds: :mod:`~zitops.agent.workers.rounds`). Every action is kept as an event for /status and told to the listener.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from zitops.agent.ops.schedule import Periodic
from zitops.agent.workers import hot_spare as hot
from zitops.agent.workers import watchdog as policy
from zitops.agent.workers.groups import cards, group_visible, slot_devices
from zitops.agent.workers.overlap import Overlap
from zitops.agent.workers.rounds import WatchdogRounds
from zitops.agent.workers.slots import PoolListener, WorkerSlot
from zitops.agent.workers.spawn import exit_text, start_child, stop_children
from zitops.agent.workers.standby import Standby
from zitops.agent.workers.vram import Reader, Vram
from zitops.agent.workers.vram_history import VramHistory
from zitops.config import AgentConfig, config_to_dict
from zitops.logbook.logs import get_logger
from zitops.worker.process import SETUP_FAILED_EXIT, worker_main
from zitops.worker.protocol import (
    Failure,
    GateWait,
    Heartbeat,
    Job,
    MemoryReport,
    Progress,
    Ready,
    Result,
    Shutdown,
    ToWorker,
)

EVENT_HISTORY = 200
"""How many recovery events /status keeps."""

log = get_logger("zitops.agent.pool")


class Pool(WatchdogRounds):
    """Spawned workers on the agent's event loop."""

    def __init__(self, config: AgentConfig, gpus: list[int | None], listener: PoolListener,
                 read_vram: Reader | None = None) -> None:
        self.config = config
        self.wd = config.profile.watchdog
        self.listener = listener
        self.slots = [WorkerSlot(id=f"w{i}", gpu=d.gpu, group=d.group)
                      for i, d in enumerate(slot_devices(gpus, config.profile.engine.parallel.degree,
                                                         config.profile.engine.parallel.kind))]
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENT_HISTORY)
        self.degraded: str | None = None
        self.fatal: str | None = None  # set once no slot can run jobs again: the agent exits (docs/runtime.md)
        self._ctx = multiprocessing.get_context("spawn")
        self._config_data = config_to_dict(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._exited = asyncio.Event()
        self._incarnations: dict[str, int] = {}
        self.overlap = Overlap(self)
        self.hot = hot.HotSpare(self, self.wd)
        self.uuids: dict[int, str] = {}  # NVML's UUID per GPU index, read at start: each worker's CUDA_VISIBLE_DEVICES
        self.standby = Standby(config, self._config_data, self._ctx, self.slot_event, self.visible_devices)
        self.vram = Vram(read_vram)
        self.vram_history = VramHistory()

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Spawn every worker (call on the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self.uuids.update(self.vram.uuids([c for s in self.slots for c in cards(s.gpu, s.group)]))
        self.standby.start(self._loop)
        for slot in self.slots:
            self._spawn(slot)

    def visible_devices(self, gpu: int | None) -> str | None:
        """The ``CUDA_VISIBLE_DEVICES`` of a worker on ``gpu``: NVML's UUID of it; None (the index) without one."""
        return self.uuids.get(gpu) if gpu is not None else None

    def periodic(self) -> list[Periodic]:
        """The watchdog's rounds, for the agent's schedule: liveness, then memory."""
        return [Periodic("liveness", min(1.0, self.wd.heartbeat_interval_s), self.check_liveness),
                Periodic("vram", self.wd.interval_s, self.check_memory, soon=True)]

    def workers(self) -> list[WorkerSlot]:
        """Every worker process: the slots, plus warming successors, retiring workers and hot spares."""
        return self.slots + self.overlap.workers() + self.hot.workers()

    def _spawn(self, slot: WorkerSlot) -> None:
        if not self.start_process(slot) and not self._stopping and self._loop is not None:
            slot.deaths.append(time.monotonic())
            self.restart(slot, "spawn_failed", delay=self.wd.restart_backoff_max_s)

    def start_process(self, slot: WorkerSlot) -> bool:
        """Start a worker process for ``slot`` (state "starting"); False when it could not start."""
        if self._stopping or self._loop is None:
            return False
        slot.incarnation = self._incarnations[slot.id] = self._incarnations.get(slot.id, -1) + 1
        started = self.standby.assign(slot.id, slot.gpu, slot.incarnation, slot.gate)
        slot.standby_pid = started[0].pid if started is not None else None
        started = started or self._spawn_process(slot)
        if started is None:
            return False
        proc, parent = started
        slot.begin(proc, parent, time.monotonic())
        self._loop.add_reader(parent.fileno(), self._readable, slot, parent)
        self._loop.add_reader(proc.sentinel, self._on_exit, slot, proc, parent)
        return True

    def _spawn_process(self, slot: WorkerSlot) -> tuple[BaseProcess, Connection] | None:
        """A fresh spawned worker process; None (slot marked dead) when it could not start."""
        try:
            return start_child(self._ctx, worker_main, f"zitops-worker-{slot.id}",
                               (slot.id, slot.gpu, slot.incarnation, self._config_data, time.time(), None, None,
                                slot.gate, group_visible(slot.group, self.uuids) or self.visible_devices(slot.gpu)))
        except OSError as exc:  # out of fds or memory: count it as a death, retry with backoff
            log.error("cannot start a worker process", worker_id=slot.id, error=str(exc))
            slot.state, slot.last_exit = "dead", f"spawn failed: {exc}"
            return None

    async def stop(self, timeout_s: float) -> None:
        """Ask every worker to finish and exit; SIGTERM, then SIGKILL, the stragglers; stop the spares."""
        self._stopping = True
        await self.standby.stop(1.0)  # idle by definition: they exit at once
        for slot in self.workers():
            for t in slot.timers:
                t.cancel()
            self.send(slot, Shutdown("agent stopping"))
        grace = max(self.wd.kill_grace_s, 1.0)
        try:
            await stop_children(lambda: [s.process for s in self.workers() if s.process is not None],
                                (timeout_s, grace, grace), self._exited)
        finally:
            self.vram.close()

    # --- messages --------------------------------------------------------------

    def send(self, slot: WorkerSlot, msg: ToWorker) -> bool:
        """Send to a worker; False when its pipe is gone (its exit is handled elsewhere)."""
        if slot.conn is None:
            return False
        try:
            slot.conn.send(msg)
        except (BrokenPipeError, OSError):
            return False
        return True

    def _readable(self, slot: WorkerSlot, conn: Connection) -> None:
        try:
            while conn.poll():
                self._handle(slot, conn.recv())
        except (EOFError, OSError):
            # The worker closed its end; the sentinel reader reports the exit.
            if self._loop is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._loop.remove_reader(conn.fileno())
        except Exception:  # a bug in a handler must not stop reading this worker
            log.exception("error handling a worker message", worker_id=slot.id)

    def _handle(self, slot: WorkerSlot, msg: Any) -> None:
        now = time.monotonic()
        if isinstance(msg, Heartbeat):
            slot.last_heartbeat = now
        elif isinstance(msg, Ready):
            self._on_ready(slot, msg, now)
        elif isinstance(msg, Result | Failure) and msg.job_id is not None:
            slot.job_id, slot.job_started = None, None
            slot.jobs_done += 1
            slot.jobs_total += 1
            # The slot stays busy until the post-job MemoryReport arrives, so
            # the leak policy sees every job before the next one is assigned.
            if isinstance(msg, Result):
                self.listener.on_result(slot, msg)
            else:
                self.listener.on_failure(slot, msg)
        elif isinstance(msg, Failure):
            slot.setup_error, slot.setup_error_type = f"{msg.exc_type}: {msg.message}", msg.exc_type
        elif isinstance(msg, MemoryReport):
            self._on_memory(slot, msg)
        elif isinstance(msg, Progress):
            self.listener.on_progress(slot, msg)
        elif isinstance(msg, GateWait) and self.hot.owns(slot):
            self.hot.on_gate(slot, msg)

    def _on_ready(self, slot: WorkerSlot, msg: Ready, now: float) -> None:
        slot.last_heartbeat = now
        slot.startup = msg.startup
        mismatch = policy.device_mismatch(slot.gpu, self.uuids.get(slot.gpu) if slot.gpu is not None else None,
                                          msg.startup.get("device"))
        if mismatch is not None:  # logged (a warning) and counted like every event
            self.event("gpu_mismatch", slot, mismatch)
        if slot.state == "abandoned":  # its predecessor died; it is being stopped
            return
        # Not sooner: the next spare's imports would slow this worker's load.
        self.standby.after_ready(slot.id, slot.gpu)
        if self.hot.owns(slot):
            self.hot.on_ready(slot, msg)
            return
        if slot.state == "warming":
            self.overlap.on_ready(slot, msg)
            return
        if slot.state == "starting":
            slot.state = "ready"
        if slot.down_since is not None:
            self.event("ready", slot, slot.down_reason or "restarted", recovery_s=round(now - slot.down_since, 3),
                       setup_s=round(msg.setup_s, 3), standby_pid=slot.standby_pid,
                       startup_s=msg.startup.get("total_s"))
            slot.down_since = slot.down_reason = None
        self.listener.on_ready(slot)
        self._ensure_hot(slot)
        self.hot.slot_changed(slot)

    def _on_memory(self, slot: WorkerSlot, msg: MemoryReport) -> None:
        slot.memory = msg
        if msg.after == "job" and slot.state == "busy" and slot.job_id is None:
            slot.state = "ready"
        # The slot's worker ran a job (its compile is done) and no successor is
        # loading: the next spare's imports slow nothing now.
        if msg.after == "job" and any(s is slot for s in self.slots) and slot.id not in self.overlap.warming:
            self.standby.after_job(slot.id, slot.gpu)
            self._ensure_hot(slot)
        if msg.after == "clear_cache" and slot.clearing is not None:
            self.event("cache_clear", slot, "idle cache clear", freed_mib=round(slot.clearing - msg.reserved_mib, 1))
            slot.clearing = None
        if msg.after == "job" and slot.pid is not None:
            verdict = policy.after_job_policy(policy.AfterJob(slot.pid, msg.allocated_mib, slot.baseline_mib,
                                                              slot.leak_streak, slot.jobs_done), self.wd)
            slot.baseline_mib, slot.leak_streak = verdict.baseline_mib, verdict.leak_streak
            self.apply(verdict.actions)
        self.listener.on_memory(slot, msg)
        if msg.after == "job" and any(s is slot for s in self.slots):  # after the next job was handed out, if any
            self.hot.slot_changed(slot)

    # --- exits, restarts ---------------------------------------------------------

    def _on_exit(self, slot: WorkerSlot, proc: BaseProcess, conn: Connection) -> None:
        assert self._loop is not None
        self._loop.remove_reader(proc.sentinel)
        try:
            self._loop.remove_reader(conn.fileno())
            while conn.poll():  # a Result sent just before exit still counts
                self._handle(slot, conn.recv())
        except (EOFError, OSError):
            pass
        conn.close()
        proc.join(2.0)  # the sentinel fires as the process exits; reaping it takes a moment
        code = proc.exitcode
        for t in slot.timers:
            t.cancel()
        slot.timers.clear()
        slot.process, slot.conn, slot.pid = None, None, None
        slot.last_exit = exit_text(code)
        job, slot.job_id, slot.job_started = slot.job_id, None, None
        self._exited.set()
        if self._stopping:
            slot.state = "stopped"
            return
        if self.hot.owns(slot):
            self.hot.on_exit(slot, code)
            return
        if self.overlap.owns(slot):
            self.overlap.on_exit(slot, code, job)
            return
        self.overlap.abandon(slot)
        now = time.monotonic()
        if slot.state == "recycling" and code == 0 and slot.kill_reason is None:
            self.restart(slot, "recycle", delay=0.0)
            if job is not None:  # cannot happen (Shutdown waits for the job), but never lose one
                self.job_lost(slot, job, "worker recycled")
            return
        if slot.kill_reason is not None:
            reason, kind = f"killed: {slot.kill_reason}", "hang"
        elif code == SETUP_FAILED_EXIT and slot.setup_error:
            reason, kind = f"engine setup failed: {slot.setup_error}", "crash"
        else:
            reason, kind = f"worker died ({slot.last_exit})", "crash"
        if slot.down_since is None:
            slot.down_since = now
        slot.down_reason = reason
        if code == SETUP_FAILED_EXIT and slot.kill_reason is None and policy.setup_error_permanent(
                slot.setup_error_type):
            self.stop_slot(slot, f"worker {slot.id}: {reason}; not retried, a restart cannot fix it: "
                                 "fix the model or config, then restart the agent", permanent=True)
            return
        slot.deaths.append(now)
        self.event(kind, slot, reason, job_id=job)
        recent = policy.deaths_in_window(slot.deaths, now, self.wd.flap_window_s)
        flapping = policy.flap_limit_hit(recent, self.wd.flap_limit)
        # Before the job is requeued, so that it goes straight to the spare.
        spare = None if flapping else self.hot.take_over(slot, reason, proc.pid)
        if job is not None:
            self.job_lost(slot, job, reason, retry=not slot.kill_fails_job)
        if spare is not None:
            self.listener.on_ready(spare)
            self._ensure_hot(spare)
            return
        if flapping:
            self.stop_slot(slot, f"worker {slot.id} died {recent} times in {self.wd.flap_window_s:g}s "
                                 f"(flap limit {self.wd.flap_limit}); restarts stopped; last: {reason}",
                           permanent=False)
            return
        slot.state = "dead"
        self.hot.slot_changed(slot)  # nothing serves: a building spare may go on
        self.restart(slot, kind, delay=policy.backoff_delay(recent, self.wd.restart_backoff_s,
                                                              self.wd.restart_backoff_max_s))

    def job_lost(self, slot: WorkerSlot, job: str, reason: str, retry: bool = True) -> None:
        """Tell the listener a job was lost; its failure (a full disk) never stops the slot's recovery."""
        try:
            self.listener.on_job_lost(slot, job, reason, retry)
        except Exception:  # the restart is the pool's; recording the job is the dispatcher's best effort
            log.exception("recording a lost job failed", worker_id=slot.id, job_id=job)

    def stop_slot(self, slot: WorkerSlot, why: str, permanent: bool) -> None:
        """No more restarts for ``slot``; when no slot can run jobs again, decide whether the agent exits."""
        slot.state, slot.permanent_error = "error", permanent
        self.degraded = why
        self.event("setup_error" if permanent else "flap_limit", slot, why)
        if self.fatal is None and policy.exit_due((s.state, s.permanent_error) for s in self.slots):
            self.fatal = f"no worker can run jobs and restarts stopped: {why}"
            self.event("exit", None, self.fatal)

    def restart(self, slot: WorkerSlot, reason: str, delay: float) -> None:
        """Spawn a fresh worker in ``slot`` after ``delay`` seconds."""
        assert self._loop is not None
        self.event("restart", slot, reason, delay_s=round(delay, 3))
        slot.timers.append(self._loop.call_later(delay, self._spawn, slot))

    # --- for the dispatcher ---------------------------------------------------------------

    def assign(self, slot: WorkerSlot, job: Job) -> bool:
        """Hand a job to an idle worker."""
        if not slot.idle or not self.send(slot, job):
            return False
        slot.state, slot.job_id, slot.job_started = "busy", job.job_id, time.monotonic()
        self.hot.slot_changed(slot)  # a building spare stops at its next step
        return True

    def running(self) -> int:
        """Jobs on workers now; a retiring worker's last job counts too (drain waits for it)."""
        return sum(1 for s in self.workers() if s.job_id is not None)

    def event(self, kind: str, slot: WorkerSlot | None, reason: str, **extra: Any) -> dict[str, Any]:
        """Record an action in the bounded history, tell the listener, and return it."""
        ev: dict[str, Any] = {"time": time.time(), "kind": kind, "worker": slot.id if slot else None,
                              "incarnation": slot.incarnation if slot else None, "reason": reason}
        ev.update({k: v for k, v in extra.items() if v is not None})
        self.events.append(ev)
        self.listener.on_event(ev)
        return ev

    def slot_event(self, kind: str, slot_id: str, reason: str, **extra: Any) -> dict[str, Any]:
        """:meth:`event` for the slot named ``slot_id`` (a standby spare's events)."""
        return self.event(kind, next((s for s in self.slots if s.id == slot_id), None), reason, **extra)
