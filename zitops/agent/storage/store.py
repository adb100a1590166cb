"""The job store's interface: what the dispatcher needs from wherever jobs are kept.

procrastinate's connector, in small: the dispatcher holds a :class:`Store`
and never knows the database behind it. :class:`zitops.agent.storage.jobs.JobStore`
is the SQLite one (one agent, one file). A PostgreSQL store for fleet mode
implements the same methods (plus the fleet's, see :mod:`zitops.agent.dispatch.fleet`)
and :func:`open_store` picks it from the config.
"""

from __future__ import annotations

import socket
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.storage.jobs import JobStore
from zitops.config import AgentConfig
from zitops.engine.request import GenerationRequest
from zitops.errors import ConfigError


class Store(Protocol):
    """Durable jobs: every method is one short transaction and returns the record as stored."""

    def add(self, request: GenerationRequest, owner: str | None = None,
            owner_cap: int | None = None, job_id: str | None = None) -> JobRecord:
        """Store a new queued job of ``owner``; QueueFull when that owner has ``owner_cap`` waiting.

        ``job_id`` (an Idempotency-Key's job): the new job's id, and when a job of that id is
        stored already, that job, unchanged (the caller checks it is the same request).
        """

    def get(self, job_id: str) -> JobRecord:
        """The job, or NotFound."""

    def start(self, job_id: str, worker: str) -> JobRecord:
        """Mark a queued job running on ``worker`` and count the attempt."""

    def requeue(self, job_id: str, error: str, uncount: bool = False) -> JobRecord:
        """Put a running job back in the queue; ``uncount`` takes back an attempt that never reached a worker."""

    def succeed(self, job_id: str, images: tuple[str, ...], info: dict[str, Any]) -> JobRecord:
        """Record a finished job's images."""

    def fail(self, job_id: str, error: str) -> JobRecord:
        """Record a failed job and why."""

    def cancel(self, job_id: str, *, running: bool = False) -> JobRecord:
        """Cancel a queued job (with ``running``: a running one, which its worker stopped); Conflict otherwise."""

    def recover(self, keep: Collection[str] = ()) -> list[str]:
        """After a restart: running jobs go back to queued, except ``keep`` (finished jobs whose images wait on
        this host for the object store); return all queued ids, oldest first."""

    def count(self, status: JobStatus) -> int:
        """How many jobs have ``status``."""

    def expire(self, max_age_s: float) -> list[JobRecord]:
        """Delete final jobs that finished more than ``max_age_s`` ago by the clock that wrote their
        ``finished_at`` (the store's own: the database's in a fleet); return them (for their files)."""

    def close(self) -> None:
        """Release the connection (again is harmless)."""


def open_store(config: AgentConfig) -> Store:
    """The configured job store: SQLite under ``paths.state_dir``, or the fleet's PostgreSQL.

    StoreUnavailable when PostgreSQL cannot be reached at start (the agent
    exits, and its supervisor or Kubernetes restarts it).
    """
    settings = config.store
    if not settings.shared:
        return JobStore(config.paths.state_dir)
    # psycopg is the optional 'fleet' extra: imported only when configured.
    from zitops.agent.storage.store_pg import PgJobStore

    url = settings.url or ""
    if settings.url_file is not None:
        try:
            url = Path(settings.url_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"store.url_file {settings.url_file}: cannot read it ({exc.strerror})") from None
    agent_id = settings.agent_id or f"{socket.gethostname()}:{config.port}"
    return PgJobStore(url, password_file=settings.password_file, agent_id=agent_id, lease_s=settings.lease_s)
