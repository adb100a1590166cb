"""Test support for the API tests: an in-memory Service and a real uvicorn in a thread.

``MemService`` is a legitimate implementation of ``zitops.agent.contract.Service``:
a bounded queue, one asyncio worker that makes real PNG/JPEG/WebP files with
PIL, cancellation, waiting, readiness. It lets the HTTP layer be tested over
real sockets without worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from PIL import Image

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.http.app import create_app
from zitops.agent.progress import ProgressBoard
from zitops.agent.workers.vram_history import VramHistory
from zitops.config import AgentConfig, config_from_mapping
from zitops.engine.request import GenerationRequest
from zitops.errors import AgentUnavailable, Conflict, NotFound, QueueFull
from zitops.profile import load_profile


def make_config(tmp: Path, **over: Any) -> AgentConfig:
    """An AgentConfig with a small profile (depth, sizes) for tests."""
    profile = load_profile("designer", list(over.pop("sets", [])))
    data: dict[str, Any] = {
        "profile": profile.model_dump(mode="json"),
        "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
    }
    data.update(over)
    return config_from_mapping(data)


class MemService:
    """An in-memory Service: bounded queue, one async worker, real image files."""

    def __init__(self, output_dir: Path, *, depth: int = 20, job_seconds: float = 0.01) -> None:
        self.output_dir = output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        self.depth = depth
        self.job_seconds = job_seconds
        self.jobs: dict[str, JobRecord] = {}
        self.queue: list[str] = []
        self.fail_next: str | None = None
        self.ready = True
        self.draining = False
        self.paused = False  # while true the worker picks up nothing, so tests can fill the queue
        self.submitted: list[GenerationRequest] = []
        self.history = VramHistory()
        self.progress = ProgressBoard()  # stays empty: this service runs no steps
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def steer(self, job_id: str, action: str) -> bool:
        """No worker steps here: nothing to steer."""
        del job_id, action
        return False

    def _ensure_worker(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._changed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _notify(self) -> None:
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if self.paused:
                await asyncio.sleep(0.01)
                continue
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            job_id = self.queue.pop(0)
            rec = self.jobs[job_id]
            self.jobs[job_id] = rec = replace(rec, status=JobStatus.RUNNING, started_at=time.time(), attempts=1)
            self._notify()
            await asyncio.sleep(self.job_seconds)
            if self.fail_next is not None:
                error, self.fail_next = self.fail_next, None
                self.jobs[job_id] = replace(rec, status=JobStatus.FAILED, error=error, finished_at=time.time())
            else:
                names = await asyncio.to_thread(self._render, rec)
                self.jobs[job_id] = replace(rec, status=JobStatus.SUCCEEDED, images=tuple(names),
                                            finished_at=time.time(), info={"model": "mem"})
            self._notify()

    def _render(self, rec: JobRecord) -> list[str]:
        req = rec.request
        names = []
        for i, seed in enumerate(req.seeds):
            img = Image.new("RGB", (req.width, req.height), (seed % 256, (seed >> 8) % 256, 7))
            ext = "jpg" if req.output_format == "jpeg" else req.output_format
            name = f"{rec.id}-{i}.{ext}"
            img.save(self.output_dir / name, format=req.output_format.upper())
            names.append(name)
        return names

    async def submit(self, request: GenerationRequest, owner: str | None = None,
                     owner_cap: int | None = None, job_id: str | None = None) -> JobRecord:
        """Store and enqueue; QueueFull at depth or at the owner's cap, AgentUnavailable while draining."""
        if job_id is not None and job_id in self.jobs:  # an Idempotency-Key's job, stored already
            return self.jobs[job_id]
        self._ensure_worker()
        if self.draining:
            raise AgentUnavailable("draining: the agent is shutting down")
        if len(self.queue) >= self.depth:
            raise QueueFull(f"queue is full ({self.depth} jobs); retry later", retry_after_s=3)
        if owner is not None and owner_cap is not None and \
                sum(1 for j in self.queue if self.jobs[j].owner == owner) >= owner_cap:
            raise QueueFull(f"queue.per_token_share: this token already has {owner_cap} jobs waiting",
                            retry_after_s=3)
        rec = JobRecord(id=job_id or uuid.uuid4().hex, status=JobStatus.QUEUED, request=request, created_at=time.time(),
                        owner=owner)
        self.jobs[rec.id] = rec
        self.queue.append(rec.id)
        self.submitted.append(request)
        assert self._wake is not None
        self._wake.set()
        return rec

    def get(self, job_id: str) -> JobRecord:
        """Raises NotFound."""
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFound(f"job {job_id}: no such job") from None

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job; NotFound or Conflict otherwise."""
        rec = self.get(job_id)
        if rec.status is not JobStatus.QUEUED:
            raise Conflict(f"job {job_id} is {rec.status.value}; only queued jobs can be cancelled")
        self.queue.remove(job_id)
        self.jobs[job_id] = rec = replace(rec, status=JobStatus.CANCELLED, finished_at=time.time())
        if self._changed is not None:
            self._notify()
        return rec

    async def wait(self, job_id: str, timeout_s: float) -> JobRecord:
        """Wait until final or timeout; return the latest record."""
        self._ensure_worker()
        deadline = time.monotonic() + timeout_s
        while True:
            rec = self.get(job_id)
            left = deadline - time.monotonic()
            if rec.status.final or left <= 0:
                return rec
            assert self._changed is not None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def image_links(self, record: JobRecord) -> list[str] | None:
        """No object store: the API links its own image routes."""
        return None

    def image(self, job_id: str, index: int) -> tuple[str, bytes]:
        """(name, bytes) of image ``index``; NotFound."""
        rec = self.get(job_id)
        if not 0 <= index < len(rec.images):
            raise NotFound(f"job {job_id}: no image {index}")
        try:
            return rec.images[index], (self.output_dir / rec.images[index]).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"job {job_id}: image {index} has expired") from None

    def livez(self) -> bool:
        """Always alive."""
        return True

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready unless told otherwise or the queue is full."""
        reasons = []
        if not self.ready:
            reasons.append("no worker is loaded")
        if len(self.queue) >= self.depth:
            reasons.append(f"queue is full ({self.depth})")
        return not reasons, reasons

    def vram_history(self) -> dict[str, Any]:
        """What the history holds (tests record into ``self.history``)."""
        return self.history.snapshot()

    def status(self) -> dict[str, Any]:
        """A /status-shaped dict."""
        ready, reasons = self.readiness()
        return {
            "profile": "designer", "model": {"name": "mem"}, "engine": "mem", "ready": ready,
            "reasons": reasons, "draining": self.draining, "uptime_s": 12.5,
            "queue": {"depth": len(self.queue), "cap": self.depth, "running": 0},
            "workers": [{"id": "w0", "gpu": 0, "pid": 4242, "state": "ready", "incarnation": 1,
                         "jobs_done": 3, "current_job": None,
                         "vram": {"allocated_mib": 1024.0, "device_used_mib": 2048.0,
                                  "device_total_mib": 16384.0, "simulated": True}}],
            "recent_failures": [{"id": "f1", "time": "2026-01-01T00:00:00Z", "ts": 1.0, "job_id": "abc",
                                 "exc_type": "EngineError", "message": "boom", "worker_id": "w0",
                                 "action": "fail"}],
            "recoveries": [{"time": 2.0, "kind": "restart", "worker": "w0", "incarnation": 2,
                            "reason": "crashed"}],
        }

    def metrics_text(self) -> str:
        """One runtime gauge."""
        return f"# HELP zitops_queue_depth Jobs waiting.\n# TYPE zitops_queue_depth gauge\nzitops_queue_depth {len(self.queue)}\n"


HTTP = httpx.Client(timeout=20)
"""One shared client: ``httpx.get`` builds a new SSL context per call, which costs ~0.2 s each."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(config: AgentConfig, service: Any, tokens: frozenset[str] = frozenset(),
          admin_tokens: frozenset[str] = frozenset()) -> Iterator[str]:
    """Serve create_app(...) with a real uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    port = free_port()
    app = create_app(config, service, tokens=tokens, admin_tokens=admin_tokens)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           log_config=None, lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
