"""Standby spares: per slot, one worker process that has already done its imports.

A restart, a recycle or an overlapped successor used to spawn a fresh
interpreter and import torch, diffusers and transformers (seconds) before
the model load even began. With ``watchdog.standby_worker`` on, the pool
keeps one spare per slot (:func:`zitops.worker.standby.standby_main`): it is
spawned with the slot's device environment, imports the engine's modules
and waits on its pipe without touching the device (no CUDA context, no
model, no GPU memory). The slot's next start sends it an ``Assign`` instead
of spawning. The next spare is started after that worker's first job (or
:data:`SPARE_AFTER_READY_S` after its Ready when no job comes), so the
spare's own imports never compete with the load and the first-job compile it
is meant to shorten. A spare that dies is replaced after the restart backoff,
and spares stop being replaced at the flap limit. The pool's ``stop`` stops them.

A strategy the pool holds: it is handed what it needs (the config, the spawn
context, a way to report events) and never imports the pool.

With ``watchdog.standby_preload`` on, a local model, offload "none" and
MemAvailable at least :data:`~zitops.engine.loader.PRELOAD_HEADROOM` times
the weights (less what other spares are still loading), the spare also loads
the pipeline onto the host after its imports; otherwise it only imports, and
the first time memory is the reason, that is logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from zitops.agent.workers import watchdog as policy
from zitops.agent.workers.spawn import exit_text, sigkill, start_child, stop_children
from zitops.config import AgentConfig
from zitops.engine.loader import FULL_RANDOM, mem_available_bytes, preload_refusal, weights_bytes
from zitops.errors import ZitopsError
from zitops.logbook.logs import get_logger
from zitops.worker.preimport import engine_modules
from zitops.worker.protocol import Assign, Shutdown, SparePreloaded, SpareReady
from zitops.worker.standby import CUDA_TOUCHED_EXIT, standby_main

log = get_logger("zitops.agent.standby")

SPARE_AFTER_READY_S = 20.0
"""When a ready worker gets no job, start the slot's next spare this long after its Ready."""


class SpareEvents(Protocol):
    """Records a spare's event against its slot in the pool's history."""

    def __call__(self, kind: str, slot_id: str, reason: str, **extra: Any) -> Any:
        """Record ``kind`` for the slot ``slot_id``."""


@dataclass
class Spare:
    """One idle pre-imported process for a slot."""

    slot_id: str
    gpu: int | None
    process: BaseProcess
    conn: Connection
    started: float = field(default_factory=time.monotonic)
    imports_s: float | None = None  # set by its SpareReady: until then it is still importing
    # The model preload: off (not asked), skipped (memory), pending (asked, still importing),
    # loading, loaded or failed; with why not, and the seconds it took.
    preload: str = "off"
    preload_reason: str | None = None
    preload_s: float | None = None
    preload_bytes: int = 0

    @property
    def pid(self) -> int | None:
        """The spare's process id."""
        return self.process.pid


@dataclass(frozen=True)
class PreloadPlan:
    """For a spare about to start: its preload state (pending, off or skipped), why not, and what it loads."""

    state: str
    reason: str | None = None
    size: int = 0  # the weights' bytes, counted against MemAvailable while it loads
    config_data: dict[str, Any] | None = None  # handed to the spare only when it preloads


def preload_off_reason(config: AgentConfig) -> str | None:
    """Why this agent's spares never preload the model (torch-free); None when they may."""
    if not config.profile.watchdog.standby_preload:
        return "watchdog.standby_preload is false"
    if config.engine.kind == "faulty" and config.engine.faults.inner != "diffusers":
        return "the fault engine's synthetic pixels load no model"
    if config.model == FULL_RANDOM:
        return "model full-random is built on the GPU, not loaded from disk"
    if config.profile.engine.offload != "none":
        return f"engine.offload is {config.profile.engine.offload}; preloading is for offload none"
    return None


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of ``pid`` in MiB (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


class Standby:
    """The pool's spares, at most one per slot id."""

    def __init__(self, config: AgentConfig, config_data: dict[str, Any], ctx: SpawnContext,
                 report: SpareEvents, visible: Callable[[int | None], str | None] = lambda gpu: None) -> None:
        self.config = config
        self._visible = visible  # a spare's CUDA_VISIBLE_DEVICES for its slot's GPU (the pool's UUID map)
        self.wd = config.profile.watchdog
        self._config_data = config_data
        self._ctx = ctx
        self._report = report
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.enabled = self.wd.standby_worker
        self.spares: dict[str, Spare] = {}
        self.used = 0  # starts served by a spare
        self.off: dict[str, str] = {}  # slot id -> why its spares are no longer replaced
        self._deaths: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=1000))
        self._timers: dict[str, asyncio.TimerHandle] = {}  # a spare due later, by slot id
        self._backoff: set[str] = set()  # slots whose pending spare replaces one that died
        self.preload_off = preload_off_reason(config)
        self._weights: int | None = None  # the model's weight bytes, read once
        self._refusal_logged = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on ``loop`` (the pool's); spares start as workers become ready."""
        self._loop = loop

    def after_ready(self, slot_id: str, gpu: int | None) -> None:
        """A slot's worker is ready: its next spare is due after its first job, or in a while."""
        if self.enabled and slot_id not in self.spares and slot_id not in self._timers and self._loop:
            self._timers[slot_id] = self._loop.call_later(SPARE_AFTER_READY_S, self.ensure, slot_id, gpu)

    def after_job(self, slot_id: str, gpu: int | None) -> None:
        """A slot's worker finished a job: start its spare now, unless one exists or waits out a backoff."""
        if slot_id not in self.spares and slot_id not in self._backoff:
            self.ensure(slot_id, gpu)

    def ensure(self, slot_id: str, gpu: int | None) -> None:
        """Start a spare for the slot unless it has one, spares are off, or the pool is stopping."""
        timer = self._timers.pop(slot_id, None)
        if timer is not None:
            timer.cancel()
        self._backoff.discard(slot_id)
        loop = self._loop
        if not self.enabled or self._stopping or loop is None or slot_id in self.spares or slot_id in self.off:
            return
        plan = self._preload_plan()
        try:
            proc, parent = start_child(self._ctx, standby_main, f"zitops-standby-{slot_id}",
                                       (gpu, engine_modules(self._config_data, gpu is not None), plan.config_data,
                                        self._visible(gpu)))
        except OSError as exc:  # out of fds or memory: the slot just starts cold next time
            log.warning("cannot start a standby spare", worker_id=slot_id, error=str(exc))
            return
        spare = self.spares[slot_id] = Spare(slot_id, gpu, proc, parent, preload=plan.state,
                                             preload_reason=plan.reason, preload_bytes=plan.size)
        loop.add_reader(parent.fileno(), self._readable, spare)
        loop.add_reader(proc.sentinel, self._on_exit, spare)

    def _preload_plan(self) -> PreloadPlan:
        """Whether the next spare loads the model too (memory checked now), and why not."""
        if not self.enabled or self.preload_off is not None:
            return PreloadPlan("off", self.preload_off)
        try:
            if self._weights is None:
                cfg = self.config
                self._weights = weights_bytes(cfg.model, cfg.paths.state_dir)
            size = self._weights
            loading = sum(s.preload_bytes for s in self.spares.values() if s.preload in ("pending", "loading"))
            reason = preload_refusal(size, mem_available_bytes(), loading)
        except (ZitopsError, OSError) as exc:
            size, reason = 0, f"the model's weights cannot be sized: {exc}"
        if reason is None:
            return PreloadPlan("pending", None, size, self._config_data)
        if not self._refusal_logged:  # once: every later spare would say the same
            self._refusal_logged = True
            log.warning("standby spares do not preload the model", reason=reason)
        return PreloadPlan("skipped", reason)

    def _readable(self, spare: Spare) -> None:
        try:
            while spare.conn.poll():
                msg = spare.conn.recv()
                if isinstance(msg, SpareReady):
                    spare.imports_s = msg.imports_s
                    if spare.preload == "pending":
                        spare.preload = "loading"
                elif isinstance(msg, SparePreloaded):
                    spare.preload = "loaded" if msg.error is None else "failed"
                    spare.preload_s, spare.preload_reason = msg.seconds, msg.error
                    if msg.error is not None:
                        log.warning("a standby spare could not preload the model", worker_id=spare.slot_id,
                                    pid=spare.pid, error=msg.error)
        except (EOFError, OSError):  # it exited: the sentinel reader handles that
            self._unwatch(spare, sentinel=False)

    def _unwatch(self, spare: Spare, sentinel: bool = True) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(OSError, ValueError):
            loop.remove_reader(spare.conn.fileno())
        if sentinel:
            loop.remove_reader(spare.process.sentinel)

    def take(self, slot_id: str, gpu: int | None) -> Spare | None:
        """The slot's live spare, handed over (no longer watched here), or None."""
        spare = self.spares.get(slot_id)
        if spare is None or spare.gpu != gpu or not spare.process.is_alive():
            return None
        del self.spares[slot_id]
        self._unwatch(spare)  # the pool watches it as a worker from now on
        self.used += 1
        return spare

    def assign(self, slot_id: str, gpu: int | None, incarnation: int,
               gate: bool | None = None) -> tuple[BaseProcess, Connection] | None:
        """Turn the slot's live spare into its worker (an Assign); None when there is none, or it just died.

        ``gate``: a gated hot spare's gate as it starts (None: not gated).
        """
        spare = self.take(slot_id, gpu)
        if spare is None:
            return None
        try:
            spare.conn.send(Assign(worker_id=slot_id, gpu=gpu, incarnation=incarnation,
                                   config_data=self._config_data, sent_at=time.time(), gate=gate))
        except (BrokenPipeError, OSError):  # it died just now: start cold instead
            spare.process.kill()
            spare.process.join(1.0)
            spare.conn.close()
            return None
        return spare.process, spare.conn

    def starting(self, now: float) -> list[policy.Starting]:
        """Spares still importing or preloading, for the startup deadline (watchdog.startup_policy)."""
        return [policy.Starting(s.pid, "standby spare", now, s.started) for s in self.spares.values()
                if s.pid is not None and _state(s) != "idle"]

    def kill(self, pid: int, reason: str) -> None:
        """SIGKILL the spare ``pid`` (stuck in set-up); its exit is handled as a death: replaced after backoff."""
        spare = next((s for s in self.spares.values() if s.pid == pid), None)
        if spare is None:
            return
        self._report("standby_killed", spare.slot_id, reason, pid=pid)
        sigkill(spare.process)

    def _on_exit(self, spare: Spare) -> None:
        self._unwatch(spare)
        spare.conn.close()
        spare.process.join(1.0)
        if self.spares.get(spare.slot_id) is spare:
            del self.spares[spare.slot_id]
        if self._stopping:
            return
        wd, slot_id = self.wd, spare.slot_id
        now = time.monotonic()
        deaths = self._deaths[slot_id]
        deaths.append(now)
        recent = policy.deaths_in_window(deaths, now, wd.flap_window_s)
        reason = f"standby spare pid {spare.pid} died ({exit_text(spare.process.exitcode)})"
        if spare.process.exitcode == CUDA_TOUCHED_EXIT:
            self.off[slot_id] = (f"standby spare pid {spare.pid}: its imports initialised CUDA, so a spare "
                                 "could hold GPU memory; spares stopped for this slot, workers start cold")
            self._report("standby_off", slot_id, self.off[slot_id])
            return
        if policy.flap_limit_hit(recent, wd.flap_limit):
            self.off[slot_id] = (f"{reason}; {recent} spare deaths in {wd.flap_window_s:g}s: "
                                 "spares stopped for this slot, workers start cold")
            self._report("standby_off", slot_id, self.off[slot_id])
            return
        delay = policy.backoff_delay(recent, wd.restart_backoff_s, wd.restart_backoff_max_s)
        self._report("standby_died", slot_id, reason, delay_s=round(delay, 3))
        if self._loop is not None:
            old = self._timers.pop(slot_id, None)
            if old is not None:
                old.cancel()
            self._timers[slot_id] = self._loop.call_later(delay, self.ensure, slot_id, spare.gpu)
            self._backoff.add(slot_id)

    async def stop(self, timeout_s: float) -> None:
        """Shut every spare down (Shutdown, then SIGTERM, then SIGKILL); none is replaced."""
        self._stopping = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        spares = list(self.spares.values())
        for spare in spares:
            with contextlib.suppress(OSError, ValueError):
                spare.conn.send(Shutdown("agent stopping"))
        await stop_children(lambda: [s.process for s in spares if s.process.is_alive()],
                            (timeout_s, timeout_s, timeout_s))
        for s in spares:
            s.process.join(0.5)

    def status(self) -> dict[str, Any]:
        """For /status: whether spares are on, each spare (with its preload), and slots whose spares were stopped."""
        now = time.monotonic()
        return {
            "enabled": self.enabled,
            "used": self.used,
            "spares": [{"id": s.slot_id, "gpu": s.gpu, "pid": s.pid, "state": _state(s), "imports_s": s.imports_s,
                        "age_s": round(now - s.started, 1), "rss_mib": rss_mib(s.pid),
                        "preload": {"state": s.preload, "seconds": s.preload_s, "reason": s.preload_reason}}
                       for s in self.spares.values()],
            "off": dict(self.off),
        }


def _state(spare: Spare) -> str:
    if spare.imports_s is None:
        return "importing"
    return "loading" if spare.preload in ("pending", "loading") else "idle"
