"""The contract between the HTTP layer and the dispatcher.

The API module only talks to a :class:`Service`; the dispatcher implements it.
Keeping this small lets each side be tested against the real other side.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from zitops.agent.progress import ProgressBoard
from zitops.engine.request import GenerationRequest

PRIORITIES = (0, 1, 2)
"""Job priorities: 0 low, 1 normal, 2 high (``request.extra["priority"]``; docs/api.md "Priorities")."""
DEFAULT_PRIORITY = 1


def priority_of(extra: dict[str, Any]) -> int:
    """A stored request's priority (``extra["priority"]``), or the default."""
    value = extra.get("priority")
    return value if isinstance(value, int) and value in PRIORITIES else DEFAULT_PRIORITY


class JobStatus(enum.StrEnum):
    """Lifecycle of a job; the last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """True when the job will not change again."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class JobRecord:
    """A job as stored in SQLite and shown by the API."""

    id: str
    status: JobStatus
    request: GenerationRequest
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    attempts: int = 0
    images: tuple[str, ...] = ()  # file names under the output dir, chosen by the server
    worker: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None  # SHA-256 hex of the submitting token (zitops.agent.http.tenants); never shown
    agent: str | None = None  # fleet mode: the agent that holds (or finished) its latest attempt; never shown

    def public(self) -> dict[str, Any]:
        """The JSON the API returns for ``GET /v1/jobs/{id}``."""
        return {
            "id": self.id,
            "status": self.status.value,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "attempts": self.attempts,
            "images": [f"/v1/jobs/{self.id}/images/{i}" for i in range(len(self.images))],
            "params": self.request.public_params(),
        }


class Service(Protocol):
    """What the HTTP layer needs from the dispatcher."""

    progress: ProgressBoard  # running jobs' steps and previews, and their event feeds

    async def submit(self, request: GenerationRequest, owner: str | None = None,
                     owner_cap: int | None = None, job_id: str | None = None) -> JobRecord:
        """Store and enqueue; raises QueueFull (before any work) or AgentUnavailable.

        ``owner`` tags the job with its tenant; with ``owner_cap``, QueueFull
        once that owner already has that many jobs waiting. ``job_id``: the
        new job's id; a job of that id already stored is returned instead.
        """

    def get(self, job_id: str) -> JobRecord:
        """Raises NotFound."""

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job or stop a running one between steps; raises NotFound or Conflict."""

    def steer(self, job_id: str, action: str) -> bool:
        """Send a running job's worker a Steer (zitops.worker.protocol); False when no worker runs it."""

    async def wait(self, job_id: str, timeout_s: float) -> JobRecord:
        """Wait until the job is final or the timeout passes; returns the latest record."""

    def image(self, job_id: str, index: int) -> tuple[str, bytes]:
        """(file name, bytes) of image ``index`` of any job of the fleet; raises NotFound."""

    def image_links(self, record: JobRecord) -> list[str] | None:
        """Presigned object-store URLs of a succeeded job's images; None: link the API's image routes."""

    def livez(self) -> bool:
        """True while the process runs (no GPU call)."""

    def readiness(self) -> tuple[bool, list[str]]:
        """(ready, reasons it is not)."""

    def status(self) -> dict[str, Any]:
        """The /status JSON (workers, queue, uptime, failures, recoveries)."""

    def vram_history(self) -> dict[str, Any]:
        """The last hour of VRAM samples per device (the console's chart)."""

    def metrics_text(self) -> str:
        """Prometheus exposition text for the runtime gauges and counters."""
