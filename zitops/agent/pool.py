"""The worker supervisor: spawned workers, heartbeats, restarts, kills, recycles.

uvicorn's multiprocess supervisor, adapted: one spawned worker per GPU, each
with its own Pipe. The agent's event loop watches each pipe and each process
sentinel with ``add_reader`` (no polling). A dead worker is restarted with
exponential backoff until its flap limit; a hung one is sent SIGTERM, then
SIGKILL after a grace period; a leaking one is recycled (finish, exit, replace), overlapped with a warm
successor when a second copy fits (:mod:`zitops.agent.overlap`). A new worker
starts in a pre-imported standby spare when the slot has one
(:mod:`zitops.agent.standby`), else in a fresh spawned process.
Every action is kept as an event for /status and counted for /metrics.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from zitops.agent import watchdog as policy
from zitops.agent.overlap import OVERLAP_POLICIES, Overlap
from zitops.agent.standby import Standby
from zitops.config import AgentConfig, config_to_dict
from zitops.logs import get_logger
from zitops.worker.process import SETUP_FAILED_EXIT, worker_main
from zitops.worker.protocol import (
    Assign,
    ClearCache,
    Failure,
    Heartbeat,
    Job,
    MemoryReport,
    Ready,
    Result,
    Shutdown,
    ToWorker,
)

EVENT_HISTORY = 200
"""How many recovery events /status keeps."""

LIVE_STATES = ("starting", "ready", "busy", "recycling", "warming", "retiring")

log = get_logger("zitops.agent.pool")


@dataclass
class WorkerSlot:
    """One worker position (one GPU, or the CPU); survives its process's restarts."""

    id: str
    gpu: int | None
    incarnation: int = -1  # the first process is incarnation 0
    process: BaseProcess | None = None
    conn: Connection | None = None
    pid: int | None = None
    state: str = "dead"  # starting / ready / busy / recycling / dead / error / stopped;
    # a successor is "warming" until it takes the slot; the worker it replaces is then "retiring"
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
    setup_error: str | None = None
    last_exit: str | None = None
    startup: dict[str, Any] | None = None  # the start-up phases of this incarnation's Ready
    standby_pid: int | None = None  # set when this incarnation runs in a standby spare
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    @property
    def idle(self) -> bool:
        """Ready and without a job."""
        return self.state == "ready" and self.job_id is None


class PoolListener(Protocol):
    """What the pool tells the dispatcher."""

    def on_ready(self, slot: WorkerSlot) -> None:
        """A worker can take jobs."""

    def on_result(self, slot: WorkerSlot, result: Result) -> None:
        """A job succeeded."""

    def on_failure(self, slot: WorkerSlot, failure: Failure) -> None:
        """A job raised inside the worker (the worker lives on)."""

    def on_memory(self, slot: WorkerSlot, report: MemoryReport) -> None:
        """A worker reported allocator memory."""

    def on_job_lost(self, slot: WorkerSlot, job_id: str, reason: str) -> None:
        """A worker died or was killed while running ``job_id``."""

    def on_event(self, event: dict[str, Any]) -> None:
        """A recovery action happened (for logs and metrics)."""


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Pool:
    """Spawned workers on the agent's event loop."""

    def __init__(self, config: AgentConfig, gpus: list[int | None], listener: PoolListener) -> None:
        self.config = config
        self.wd = config.profile.watchdog
        self.listener = listener
        self.slots = [WorkerSlot(id=f"w{i}", gpu=g) for i, g in enumerate(gpus)]
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENT_HISTORY)
        self.degraded: str | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._config_data = config_to_dict(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._exited = asyncio.Event()
        self._incarnations: dict[str, int] = {}
        self.overlap = Overlap(self)
        self.standby = Standby(self)
        self.gpu_free_mib: Callable[[int], float | None] = lambda _gpu: None
        """NVML's free MiB on a GPU, or None; the dispatcher wires it to the watchdog's last read."""

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Spawn every worker (call on the running event loop)."""
        self._loop = asyncio.get_running_loop()
        for slot in self.slots:
            self._spawn(slot)

    def workers(self) -> list[WorkerSlot]:
        """Every worker process: the slots, plus warming successors and retiring workers."""
        return self.slots + self.overlap.workers()

    def _spawn(self, slot: WorkerSlot) -> None:
        if not self.start_process(slot) and not self._stopping and self._loop is not None:
            slot.deaths.append(time.monotonic())
            self.restart(slot, "spawn_failed", delay=self.wd.restart_backoff_max_s)

    def start_process(self, slot: WorkerSlot) -> bool:
        """Start a worker process for ``slot`` (state "starting"); False when it could not start."""
        if self._stopping or self._loop is None:
            return False
        slot.incarnation = self._incarnations[slot.id] = self._incarnations.get(slot.id, -1) + 1
        started = self._from_standby(slot) or self._spawn_process(slot)
        if started is None:
            return False
        proc, parent = started
        now = time.monotonic()
        slot.process, slot.conn, slot.pid = proc, parent, proc.pid
        slot.state, slot.jobs_done, slot.job_id, slot.job_started = "starting", 0, None, None
        slot.last_heartbeat = slot.spawned_at = now
        slot.memory, slot.baseline_mib, slot.leak_streak, slot.clearing = None, None, 0, None
        slot.cleared_after = -1
        slot.kill_reason = slot.setup_error = None
        slot.nvml_used_mib = None
        slot.startup = None
        self._loop.add_reader(parent.fileno(), self._readable, slot, parent)
        self._loop.add_reader(proc.sentinel, self._on_exit, slot, proc, parent)
        return True

    def _from_standby(self, slot: WorkerSlot) -> tuple[BaseProcess, Connection] | None:
        """Hand the slot's standby spare its assignment; None when there is no live spare."""
        slot.standby_pid = None
        spare = self.standby.take(slot.id, slot.gpu)
        if spare is None:
            return None
        try:
            spare.conn.send(Assign(worker_id=slot.id, gpu=slot.gpu, incarnation=slot.incarnation,
                                   config_data=self._config_data, sent_at=time.time()))
        except (BrokenPipeError, OSError):  # it died just now: start cold instead
            spare.process.kill()
            spare.process.join(1.0)
            spare.conn.close()
            return None
        slot.standby_pid = spare.pid
        return spare.process, spare.conn

    def _spawn_process(self, slot: WorkerSlot) -> tuple[BaseProcess, Connection] | None:
        """A fresh spawned worker process; None (slot marked dead) when it could not start."""
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main, name=f"zitops-worker-{slot.id}",
            args=(child, slot.id, slot.gpu, slot.incarnation, self._config_data, time.time()),
        )
        try:
            proc.start()
        except OSError as exc:  # out of fds or memory: count it as a death, retry with backoff
            parent.close()
            child.close()
            log.error("cannot start a worker process", worker_id=slot.id, error=str(exc))
            slot.state, slot.last_exit = "dead", f"spawn failed: {exc}"
            return None
        child.close()  # so the worker sees EOF, and we see it exit, when either side dies
        return proc, parent

    async def stop(self, timeout_s: float) -> None:
        """Ask every worker to finish and exit; SIGTERM, then SIGKILL, the stragglers; stop the spares."""
        self._stopping = True
        await self.standby.stop(1.0)  # idle by definition: they exit at once
        for slot in self.workers():
            for t in slot.timers:
                t.cancel()
            self.send(slot, Shutdown("agent stopping"))
        deadline = time.monotonic() + timeout_s
        for sig_step in ("wait", "terminate", "kill"):
            while any(s.process is not None for s in self.workers()) and time.monotonic() < deadline:
                self._exited.clear()
                try:
                    await asyncio.wait_for(self._exited.wait(), max(0.05, deadline - time.monotonic()))
                except TimeoutError:
                    break
            live = [s for s in self.workers() if s.process is not None]
            if not live:
                return
            for s in live:
                assert s.process is not None
                if sig_step == "wait":
                    s.process.terminate()
                elif sig_step == "terminate":
                    s.process.kill()
            deadline = time.monotonic() + max(self.wd.kill_grace_s, 1.0)

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
            slot.last_heartbeat = now
            slot.startup = msg.startup
            if slot.state == "abandoned":  # its predecessor died; it is being stopped
                return
            # Not sooner: the next spare's imports would slow this worker's load.
            self.standby.after_ready(slot.id, slot.gpu)
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
            slot.setup_error = f"{msg.exc_type}: {msg.message}"
        elif isinstance(msg, MemoryReport):
            slot.memory = msg
            if msg.after == "job" and slot.state == "busy" and slot.job_id is None:
                slot.state = "ready"
            # The slot's worker ran a job (its compile is done) and no successor is
            # loading: the next spare's imports slow nothing now.
            if (msg.after == "job" and any(s is slot for s in self.slots)
                    and slot.id not in self.overlap.warming):
                self.standby.after_job(slot.id, slot.gpu)
            if msg.after == "clear_cache" and slot.clearing is not None:
                self.event("cache_clear", slot, "idle cache clear",
                           freed_mib=round(slot.clearing - msg.reserved_mib, 1))
                slot.clearing = None
            self.listener.on_memory(slot, msg)

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
        slot.last_exit = _exit_text(code)
        job, slot.job_id, slot.job_started = slot.job_id, None, None
        self._exited.set()
        if self._stopping:
            slot.state = "stopped"
            return
        if self.overlap.owns(slot):
            self.overlap.on_exit(slot, code, job)
            return
        self.overlap.abandon(slot)
        now = time.monotonic()
        if slot.state == "recycling" and code == 0 and slot.kill_reason is None:
            if job is not None:  # cannot happen (Shutdown waits for the job), but never lose one
                self.listener.on_job_lost(slot, job, "worker recycled")
            self.restart(slot, "recycle", delay=0.0)
            return
        if slot.kill_reason is not None:
            reason, kind = f"killed: {slot.kill_reason}", "hang"
        elif code == SETUP_FAILED_EXIT and slot.setup_error:
            reason, kind = f"engine setup failed: {slot.setup_error}", "crash"
        else:
            reason, kind = f"worker died ({slot.last_exit})", "crash"
        slot.deaths.append(now)
        if slot.down_since is None:
            slot.down_since = now
        slot.down_reason = reason
        self.event(kind, slot, reason, job_id=job)
        if job is not None:
            self.listener.on_job_lost(slot, job, reason)
        recent = policy.deaths_in_window(slot.deaths, now, self.wd.flap_window_s)
        if policy.flap_limit_hit(recent, self.wd.flap_limit):
            slot.state = "error"
            self.degraded = (f"worker {slot.id} died {recent} times in {self.wd.flap_window_s:g}s "
                             f"(flap limit {self.wd.flap_limit}); restarts stopped; last: {reason}")
            self.event("flap_limit", slot, self.degraded)
            return
        slot.state = "dead"
        self.restart(slot, kind, delay=policy.backoff_delay(recent, self.wd.restart_backoff_s,
                                                              self.wd.restart_backoff_max_s))

    def restart(self, slot: WorkerSlot, reason: str, delay: float) -> None:
        """Spawn a fresh worker in ``slot`` after ``delay`` seconds."""
        assert self._loop is not None
        self.event("restart", slot, reason, delay_s=round(delay, 3))
        slot.timers.append(self._loop.call_later(delay, self._spawn, slot))

    # --- actions -----------------------------------------------------------------

    def assign(self, slot: WorkerSlot, job: Job) -> bool:
        """Hand a job to an idle worker."""
        if not slot.idle or not self.send(slot, job):
            return False
        slot.state, slot.job_id, slot.job_started = "busy", job.job_id, time.monotonic()
        return True

    def kill(self, slot: WorkerSlot, reason: str) -> None:
        """SIGTERM a hung worker, then SIGKILL after the grace period; it is replaced on exit."""
        if slot.process is None or slot.kill_reason is not None or self._loop is None:
            return
        slot.kill_reason = reason
        slot.down_since, slot.down_reason = time.monotonic(), f"killed: {reason}"
        self.event("kill", slot, reason, job_id=slot.job_id)
        proc = slot.process
        proc.terminate()
        slot.timers.append(self._loop.call_later(self.wd.kill_grace_s, self._sigkill, proc))

    @staticmethod
    def _sigkill(proc: BaseProcess) -> None:
        if proc.exitcode is None and proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

    def recycle(self, slot: WorkerSlot, reason: str, kind: str = "recycle", overlap: bool = True) -> None:
        """Replace a worker: warm a successor first when a second copy fits, else finish, exit, restart."""
        if (slot.state not in ("ready", "busy") or slot.kill_reason is not None
                or slot.id in self.overlap.warming):  # at most one successor per slot
            return
        if (overlap and self.wd.overlap_recycle and kind in OVERLAP_POLICIES and self._room(slot)
                and self.overlap.start(slot, reason, kind)):
            return
        slot.state = "recycling"
        slot.down_since, slot.down_reason = time.monotonic(), f"recycled: {reason}"
        self.event("recycle", slot, reason, policy=kind, overlap=False, jobs_done=slot.jobs_done,
                   allocated_mib=slot.memory.allocated_mib if slot.memory else None)
        self.send(slot, Shutdown(reason))

    def _room(self, slot: WorkerSlot) -> bool:
        free = self.gpu_free_mib(slot.gpu) if slot.gpu is not None else None
        return policy.room_for_successor(slot.gpu is not None, free, slot.nvml_used_mib)

    def clear_cache(self, slot: WorkerSlot) -> None:
        """Ask an idle worker to return cached allocator blocks, at most once between jobs."""
        # What one clear cannot free (fragmented blocks) a second one will not
        # free either, so wait for the next job before trying again.
        if (slot.idle and slot.clearing is None and slot.memory is not None
                and slot.cleared_after != slot.jobs_done and self.send(slot, ClearCache())):
            slot.clearing = slot.memory.reserved_mib
            slot.cleared_after = slot.jobs_done

    def check_liveness(self) -> None:
        """Kill every live worker that stopped heartbeating or overran its job timeout."""
        now = time.monotonic()
        for slot in self.workers():
            if slot.process is None or slot.state not in LIVE_STATES:
                continue
            why = policy.hang_reason(now, slot.last_heartbeat, self.wd.heartbeat_timeout_s,
                                     slot.job_started, self.config.profile.queue.job_timeout_s)
            if why is not None:
                self.kill(slot, why)

    def event(self, kind: str, slot: WorkerSlot | None, reason: str, **extra: Any) -> dict[str, Any]:
        """Record an action in the bounded history, tell the listener, and return it."""
        ev: dict[str, Any] = {"time": time.time(), "kind": kind, "worker": slot.id if slot else None,
                              "incarnation": slot.incarnation if slot else None, "reason": reason}
        ev.update({k: v for k, v in extra.items() if v is not None})
        self.events.append(ev)
        self.listener.on_event(ev)
        return ev
