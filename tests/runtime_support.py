"""Test support for the runtime tests: configs, an event loop in a thread, polling.

The dispatcher lives on one asyncio loop; tests drive it from the main thread
through :class:`LoopThread`, so every call runs on the loop, as in the agent.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.engine_support import tiny_model_dir
from zitops.config import AgentConfig, config_from_mapping
from zitops.engine.request import GenerationRequest
from zitops.profile import load_profile

T = TypeVar("T")

FAST_SETS = [
    "generation.width=64", "generation.height=64", "generation.steps=2",
    "watchdog.interval_s=0.5", "watchdog.heartbeat_interval_s=0.2", "watchdog.heartbeat_timeout_s=5",
    "watchdog.kill_grace_s=1", "watchdog.restart_backoff_s=0.2", "watchdog.restart_backoff_max_s=1",
    "queue.job_timeout_s=20", "queue.drain_timeout_s=20",
]
EXACT_SETS = ["engine.precision=fp32", "engine.vae_precision=fp32"]
"""fp32 on the CPU: fast there, and a worker's pixels equal an in-process run's exactly."""
REAL_ENGINE_SETS = EXACT_SETS + ["engine.compile=false", "watchdog.heartbeat_interval_s=0.5",
                                  "watchdog.heartbeat_timeout_s=60"]
"""The real engine on the CPU, as fast as it gets. Its worker imports torch and diffusers while it
starts; on two loaded cores that held its heartbeat thread off for over 5 s (it was killed as
hung, five times over), so the liveness limit is generous here; tests of the hang policy set
their own. compile is skipped on the CPU anyway, and off it spares the worker inductor's imports."""


def link_tiny_model(state_dir: Path) -> Path:
    """Point ``<state_dir>/models/tiny`` at the session's tiny model, so ``model: tiny`` builds nothing."""
    target = Path(state_dir) / "models" / "tiny"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(tiny_model_dir(), target_is_directory=True)
    return target


def runtime_config(tmp: Path, *, faults: dict[str, Any] | None = None, sets: list[str] | None = None,
                   kind: str | None = None, **over: Any) -> AgentConfig:
    """A fast agent config rooted at ``tmp``.

    The real engine (the session's tiny pipeline, 64x64, 2 steps, fp32) unless
    a fault is injected: ``faults`` (or ``kind="faulty"``) selects the fault
    engine with synthetic pixels.
    """
    kind = kind or ("faulty" if faults is not None else "diffusers")
    profile = load_profile("designer", FAST_SETS + (REAL_ENGINE_SETS if kind == "diffusers" else []) + list(sets or []))
    data: dict[str, Any] = {
        "profile": profile.model_dump(mode="json"),
        "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
        "engine": {"kind": kind, "faults": {"inner": "synthetic", "job_seconds": 0.05, **(faults or {})}},
        "log_format": "json",
    }
    data.update(over)
    config = config_from_mapping(data, "test config")
    if config.model == "tiny" and "diffusers" in (config.engine.kind, config.engine.faults.inner):
        link_tiny_model(Path(config.paths.state_dir))
    return config


def request(prompt: str = "a red fox", seed: int = 1, batch: int = 1, **over: Any) -> GenerationRequest:
    """A small request (64x64, 2 steps)."""
    fields: dict[str, Any] = dict(prompt=prompt, seeds=tuple(range(seed, seed + batch)), width=64,
                                  height=64, steps=2)
    fields.update(over)
    return GenerationRequest(**fields)


class LoopThread:
    """An asyncio loop in a daemon thread; ``run`` and ``call`` execute on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 60.0) -> T:
        """Run a coroutine on the loop and return its result."""
        async def wrap() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Call a plain function on the loop thread."""
        async def wrap() -> T:
            return fn(*args)

        return self.run(wrap(), timeout)

    def stop(self) -> None:
        """Stop the loop and join its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


class Runtime:
    """A started Dispatcher on a LoopThread, with helpers that run on its loop."""

    def __init__(self, config: AgentConfig, notifier: Any = None, wait_ready: bool = True,
                 gpus: list[int | None] | None = None) -> None:
        from zitops.agent.dispatch.dispatcher import Dispatcher

        self.config = config
        self.lt = LoopThread()
        self.d: Dispatcher = self.lt.call(lambda: Dispatcher(config, notifier=notifier, gpus=gpus))
        try:
            self.lt.run(self.d.start())
            if wait_ready:
                wait_until(lambda: self.ready()[0], 60, what="a ready worker")
        except BaseException:
            self.close()
            raise

    def ready(self) -> tuple[bool, list[str]]:
        """The dispatcher's readiness."""
        return self.lt.call(self.d.readiness)

    def status(self) -> dict[str, Any]:
        """The /status JSON."""
        return self.lt.call(self.d.status)

    def submit(self, req: GenerationRequest | None = None) -> Any:
        """Submit a request (default: a small one)."""
        return self.lt.run(self.d.submit(req or request()))

    def wait(self, job_id: str, timeout: float = 30.0) -> Any:
        """Wait for a job to be final."""
        return self.lt.run(self.d.wait(job_id, timeout), timeout + 5)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The recovery history, optionally of one kind."""
        evs = self.lt.call(lambda: list(self.d.pool.events))
        return [e for e in evs if kind is None or e["kind"] == kind]

    def close(self) -> None:
        """Stop workers and the loop."""
        try:
            self.lt.run(self.d.close(), 30)
        finally:
            self.lt.stop()


def pid_alive(pid: int) -> bool:
    """True while a process with ``pid`` exists (signal 0 probes without touching it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def hung_job_pid(rt: Runtime, job_id: str) -> int:
    """The pid of the worker running ``job_id``, once the fault engine's ``hang_on_job`` holds it there."""
    pid: int = wait_until(lambda: next((w["pid"] for w in rt.status()["workers"] if w["current_job"] == job_id),
                                       None), 30, what="the job to start")
    log = Path(rt.config.paths.log_dir) / "worker-w0.log"
    wait_until(lambda: log.is_file() and "fault: hanging on job" in log.read_text("utf-8", "replace"), 30,
               what="the worker to be inside the job")
    return pid
