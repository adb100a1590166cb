"""Jobs' progress as the HTTP layer shows it: the latest step of each job, and event feeds for SSE.

The dispatcher tells the board what happens (queued, started, a worker's
Progress, the final record); routes read the latest state (A1111's
``/sdapi/v1/progress``) or subscribe to a job's events (``GET
/v1/jobs/{id}/events``, OpenAI streaming). Everything runs on the agent's
one event loop. Bounded: the board forgets the oldest finished jobs past
:data:`KEEP_JOBS`, and a subscriber that does not read loses step events,
never the final one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from zitops.agent.pace import Pace, StepClock
from zitops.budget import work_per_step

KEEP_JOBS = 512
"""Jobs whose progress the board remembers (running ones are never dropped)."""
FEED_DEPTH = 64
"""Events a subscriber may fall behind by before step events are dropped for it."""
FINAL_EVENTS = {"succeeded": "done", "failed": "failed", "cancelled": "cancelled"}
"""A final job status -> its event."""


@dataclass
class JobProgress:
    """What is known of one job's progress."""

    job_id: str
    state: str = "queued"  # queued, running, done, failed, cancelled
    step: int = 0
    steps: int = 0
    queued_at: float = field(default_factory=time.time)
    started: float | None = None  # time.monotonic()
    preview: bytes | None = None  # the newest preview PNG
    preview_step: int = 0
    wants_preview: bool = False
    error: str | None = None
    owner: str | None = None

    @property
    def fraction(self) -> float:
        """0..1, the share of steps done (1 once done)."""
        if self.state == "done":
            return 1.0
        return self.step / self.steps if self.steps else 0.0

    def eta_s(self) -> float | None:
        """Seconds left at the pace so far; None before the first step."""
        if self.started is None or not self.step or not self.steps:
            return None
        elapsed = time.monotonic() - self.started
        return max(0.0, elapsed / self.step * (self.steps - self.step))

    def event(self, kind: str) -> dict[str, Any]:
        """This state as one event of ``kind``."""
        out: dict[str, Any] = {"event": kind, "job_id": self.job_id, "step": self.step, "steps": self.steps}
        if self.error:
            out["error"] = self.error
        return out


class ProgressBoard:
    """The latest progress of recent jobs, and per-job feeds of events."""

    def __init__(self, keep: int = KEEP_JOBS, cpu_only: bool = False) -> None:
        self.keep = keep
        self.cpu_only = cpu_only
        """Every worker of this agent runs on a CPU (the cost check's rate is then measured, not calibrated)."""
        self.pace = Pace()
        self._clocks: dict[str, StepClock] = {}
        self.jobs: collections.OrderedDict[str, JobProgress] = collections.OrderedDict()
        self._feeds: dict[str, list[asyncio.Queue[dict[str, Any]]]] = {}

    def get(self, job_id: str) -> JobProgress | None:
        """The job's progress, if the board still has it."""
        return self.jobs.get(job_id)

    def queued(self, job_id: str, steps: int, owner: str | None = None) -> None:
        """A job was accepted."""
        self.jobs[job_id] = JobProgress(job_id, steps=steps, owner=owner)
        self._forget()
        self._publish(self.jobs[job_id], "queued")

    def started(self, job_id: str, request: Any = None, on_cpu: bool = False) -> None:
        """A worker took the job (``request``: its GenerationRequest, whose steps time this host's pace)."""
        job = self._job(job_id)
        job.state, job.started, job.step = "running", time.monotonic(), 0
        if request is not None:
            work = work_per_step(request.width, request.height, request.batch, request.sampler)
            self._clocks[job_id] = StepClock(work, on_cpu)
        self._publish(job, "started")

    def step(self, job_id: str, step: int, steps: int, preview: bytes | None) -> None:
        """A worker finished a step (the steps count is the pipeline's, e.g. fewer for img2img)."""
        job = self._job(job_id)
        job.state, job.step, job.steps = "running", step, steps
        clock = self._clocks.get(job_id)
        if clock is not None:
            clock.step(step)
        if preview is not None:
            job.preview, job.preview_step = preview, step
        self._publish(job, "step", preview)

    def finished(self, job_id: str, status: str, error: str | None = None,
                 stopped_at: int | None = None) -> None:
        """The job is final (``status`` as JobStatus spells it): tell subscribers, keep it for late readers.

        ``stopped_at``: the step an interrupted job stopped after.
        """
        job = self._job(job_id)
        clock = self._clocks.pop(job_id, None)
        if clock is not None and status == "succeeded":
            self.pace.add(clock)
        job.state = FINAL_EVENTS.get(status, status)
        job.error = error if status == "failed" else None
        if status == "succeeded":
            job.step = stopped_at if stopped_at is not None else job.steps
        self._publish(job, job.state)
        self._forget()

    def ask_preview(self, job_id: str) -> bool:
        """Mark that a client wants previews of the job; True when this is news (the worker must be told)."""
        job = self.jobs.get(job_id)
        if job is None or job.wants_preview:
            return False
        job.wants_preview = True
        return True

    def running(self, owner: str | None = None, any_owner: bool = True) -> list[JobProgress]:
        """Running jobs, oldest first; only ``owner``'s unless ``any_owner``."""
        return [j for j in self.jobs.values() if j.state == "running" and (any_owner or j.owner == owner)]

    def subscribe(self, job_id: str) -> asyncio.Queue[dict[str, Any]]:
        """A feed of the job's events from now on; call :meth:`unsubscribe` when done."""
        feed: asyncio.Queue[dict[str, Any]] = asyncio.Queue(FEED_DEPTH)
        self._feeds.setdefault(job_id, []).append(feed)
        return feed

    def unsubscribe(self, job_id: str, feed: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop feeding ``feed``."""
        feeds = self._feeds.get(job_id, [])
        with contextlib.suppress(ValueError):
            feeds.remove(feed)
        if not feeds:
            self._feeds.pop(job_id, None)

    def _job(self, job_id: str) -> JobProgress:
        job = self.jobs.get(job_id)
        if job is None:  # restored from the store after a restart, or forgotten
            job = self.jobs[job_id] = JobProgress(job_id)
        return job

    def _publish(self, job: JobProgress, kind: str, preview: bytes | None = None) -> None:
        event = job.event(kind)
        if preview is not None:
            event["preview"] = preview
        for feed in self._feeds.get(job.job_id, []):
            if feed.full():
                if kind == "step":
                    continue  # a slow reader misses steps, not the outcome
                with contextlib.suppress(asyncio.QueueEmpty):
                    feed.get_nowait()
            feed.put_nowait(event)

    def _forget(self) -> None:
        # Oldest first, and only as many as are over: the oldest is almost always final, so a
        # full board costs one step per new job, not a scan of all KEEP_JOBS.
        excess = len(self.jobs) - self.keep
        if excess <= 0:
            return
        drop = []
        for job_id, job in self.jobs.items():
            if job.state not in ("queued", "running"):
                drop.append(job_id)
                if len(drop) == excess:
                    break
        for job_id in drop:
            del self.jobs[job_id]
