"""The shared job store: PostgreSQL, for a fleet of agents behind one endpoint.

A drop-in for :class:`zitops.agent.storage.jobs.JobStore` (same methods, same
records, same errors) plus the fleet operations: leases claimed with
``FOR UPDATE SKIP LOCKED``, heartbeats, the reaper, fleet-wide counts, and
images kept in PostgreSQL so any agent serves any job. Every query is in
``sql/queries.sql``; times are the server's. docs/fleet.md has the design.

Every method is one short transaction on a pooled connection and raises
:class:`StoreUnavailable` (never a driver exception) while the server cannot
be used; the pool reconnects by itself when it is back.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.storage.pg_connect import Breaker, PgConnector, is_down
from zitops.agent.storage.pg_listen import PgListener
from zitops.agent.storage.pg_schema import migrate, query
from zitops.engine.request import GenerationRequest
from zitops.errors import Conflict, NotFound, QueueFull, ZitopsError


@dataclass(frozen=True)
class FleetCounts:
    """The fleet's load, for back-pressure and /metrics."""

    queued: int
    running: int
    ready_agents: int
    image_bytes: int


def default_agent_id() -> str:
    """This host's name: stable across restarts, unique per pod on Kubernetes."""
    return socket.gethostname()


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _record(row: DictRow) -> JobRecord:
    return JobRecord(
        id=row["id"], status=JobStatus(row["status"]), request=GenerationRequest.from_dict(row["request"]),
        created_at=row["created_at"].timestamp(), started_at=_epoch(row["started_at"]),
        finished_at=_epoch(row["finished_at"]), error=row["error"], attempts=row["attempts"],
        images=tuple(row["images"]), worker=row["worker"], info=row["info"], owner=row["owner"],
    )


def _info_json(info: dict[str, Any]) -> Jsonb:
    return Jsonb(info, dumps=lambda obj: json.dumps(obj, default=str))


class PgJobStore:
    """Jobs in PostgreSQL, shared by every agent of a fleet.

    ``agent_id`` names this agent in leases and failure records; it must be
    unique in the fleet and stable across restarts (``recover`` takes back
    the jobs the same id was running). ``lease_s`` is how long a claim lives
    without a heartbeat; heartbeat at a third of it. ``max_attempts`` caps how
    often a job may be started (today's rule: a job that kills workers twice fails).
    """

    def __init__(self, url: str, *, password_file: str | Path | None = None, agent_id: str | None = None,
                 lease_s: float = 30.0, max_attempts: int = 2, pool_size: int = 4,
                 timeout_s: float = 2.0, probe_interval_s: float = 1.0) -> None:
        self.connector = PgConnector(url, password_file=password_file, connect_timeout_s=timeout_s)
        self.agent_id = agent_id or default_agent_id()
        self.lease_s = float(lease_s)
        self.max_attempts = max_attempts
        self._pool_size, self._timeout_s = pool_size, timeout_s
        self._breaker = Breaker(self._reopen, probe_interval_s, on_trip=self._close_pool)
        self._pool = self._open_pool()
        try:
            with self._pool.connection() as conn:
                migrate(conn)
        except Exception as exc:  # psycopg.Error, PoolTimeout, or a newer schema
            self._pool.close()
            raise self.connector.unavailable(exc) from exc

    # --- plumbing -----------------------------------------------------------------

    def _open_pool(self) -> ConnectionPool[psycopg.Connection[DictRow]]:
        pool = self.connector.pool(max_size=self._pool_size, timeout_s=self._timeout_s)
        try:
            pool.open(wait=True, timeout=self._timeout_s)
        except Exception as exc:
            pool.close()
            # The pool only says "timeout"; one direct attempt says why
            # (refused, bad password, unreadable password file, no database).
            try:
                self.connector.probe()
            except Exception as why:
                raise self.connector.unavailable(why) from exc
            raise self.connector.unavailable(exc) from exc
        return pool

    def _close_pool(self) -> None:
        self._pool.close(timeout=self._timeout_s)

    def _reopen(self) -> None:
        # The probe after an outage: a fresh pool connects at once, where the
        # old one would wait out its reconnect backoff (up to minutes).
        pool = self._open_pool()
        old, self._pool = self._pool, pool
        old.close(timeout=0)
        if self._breaker.stopped:  # close() ran meanwhile
            pool.close()

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[DictRow]]:
        self._breaker.check()
        try:
            with self._pool.connection() as conn:
                yield conn
        except ZitopsError:
            raise
        except Exception as exc:
            if not (isinstance(exc, psycopg.Error) or is_down(exc)):
                raise
            error = self.connector.unavailable(exc)
            if is_down(exc):
                self._breaker.trip(str(error))
            raise error from exc

    def _rows(self, name: str, binary: bool = False, **params: Any) -> list[DictRow]:
        with self._conn() as conn:
            return conn.execute(query(name), params, binary=binary).fetchall()

    def _rows_lazy(self, name: str, **params: Any) -> list[DictRow]:
        """Like _rows, but the commit does not wait for the WAL flush.

        For writes a server crash may lose without harm: a lost claim puts the
        job back in the queue (the agent's result is still accepted while it
        is queued), a lost heartbeat is renewed by the next. One pipelined
        round trip; it saves the fsync that bounds the fleet's jobs/s.
        """
        with self._conn() as conn:
            with conn.pipeline(), conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = off")
                cur = conn.execute(query(name), params)
            return cur.fetchall()

    def _row(self, name: str, **params: Any) -> DictRow | None:
        rows = self._rows(name, **params)
        return rows[0] if rows else None

    def _changed(self, row: DictRow | None, job_id: str, action: str) -> JobRecord:
        """The updated record, or why the fenced update changed nothing."""
        if row is not None:
            return _record(row)
        current = self._row("get_job", id=job_id)
        if current is None:
            raise NotFound(f"job {job_id}: no such job (unknown id, or expired and removed)")
        if current["status"] == JobStatus.RUNNING.value:
            raise Conflict(f"job {job_id}: is running on agent {current['agent_id']} (attempt "
                           f"{current['attempts']}); this agent cannot {action} it (its lease moved on)")
        raise Conflict(f"job {job_id}: is {current['status']}; cannot {action} it")

    def available(self) -> tuple[bool, str | None]:
        """(True, None) while the store answers; (False, reason) while it is known down."""
        reason = self._breaker.reason
        return reason is None, reason

    def close(self) -> None:
        """Close the pool (again is harmless)."""
        self._breaker.close()
        self._pool.close()

    def listener(self, retry_s: float = 1.0) -> PgListener:
        """A LISTEN connection for wake-ups (queued jobs, finished jobs) on this store's server."""
        return PgListener(self.connector, retry_s=retry_s)

    # --- JobStore's methods ----------------------------------------------------------

    def add(self, request: GenerationRequest, owner: str | None = None,
            owner_cap: int | None = None) -> JobRecord:
        """Store a new queued job of ``owner`` and return it (the fleet is notified).

        With ``owner_cap``: QueueFull, and nothing stored, when that owner
        already has that many jobs waiting (queue.per_token_share).
        """
        row = self._row("add_job", id=uuid.uuid4().hex, request=Jsonb(request.to_dict()),
                        owner=owner, owner_cap=owner_cap)
        if row is None:
            raise QueueFull(f"queue.per_token_share: this token already has {owner_cap} jobs waiting, its "
                            "share of the queue; retry when one has started")
        return _record(row)

    def get(self, job_id: str) -> JobRecord:
        """The job, or NotFound."""
        row = self._row("get_job", id=job_id)
        if row is None:
            raise NotFound(f"job {job_id}: no such job (unknown id, or expired and removed)")
        return _record(row)

    def start(self, job_id: str, worker: str) -> JobRecord:
        """Start a queued job on ``worker`` of this agent: count the attempt and take a lease."""
        row = self._row("start_job", id=job_id, worker=worker, agent_id=self.agent_id, lease_s=self.lease_s)
        return self._changed(row, job_id, "start")

    def requeue(self, job_id: str, error: str, uncount: bool = False) -> JobRecord:
        """Put a running job back in the queue (its worker died); keep why.

        ``uncount`` takes back the attempt when the job never reached a worker.
        """
        row = self._row("requeue_job", id=job_id, error=error or None, uncount=1 if uncount else 0,
                        agent_id=self.agent_id)
        return self._changed(row, job_id, "requeue")

    def succeed(self, job_id: str, images: tuple[str, ...], info: dict[str, Any]) -> JobRecord:
        """Record a finished job's images (names; the bytes go through ``put_images`` first)."""
        row = self._row("succeed_job", id=job_id, images=Jsonb(list(images)), info=_info_json(info),
                        agent_id=self.agent_id)
        return self._changed(row, job_id, "succeed")

    def fail(self, job_id: str, error: str) -> JobRecord:
        """Record a failed job and why."""
        row = self._row("fail_job", id=job_id, error=error, agent_id=self.agent_id)
        return self._changed(row, job_id, "fail")

    def cancel(self, job_id: str, *, running: bool = False) -> JobRecord:
        """Cancel a queued job (with ``running``: a running one, which its worker stopped); Conflict otherwise."""
        row = self._row("cancel_running_job" if running else "cancel_job", id=job_id)
        if row is not None:
            return _record(row)
        record = self.get(job_id)
        raise Conflict(f"job {job_id}: is {record.status.value}; only queued jobs can be cancelled")

    def recover(self) -> list[str]:
        """After a restart: this agent's running jobs go back to queued; return all queued ids, oldest first."""
        with self._conn() as conn, conn.transaction():
            conn.execute(query("recover_jobs"), {"agent_id": self.agent_id})
            rows = conn.execute(query("queued_ids")).fetchall()
        return [r["id"] for r in rows]

    def count(self, status: JobStatus) -> int:
        """How many jobs of the fleet have ``status``."""
        row = self._row("count_jobs", status=status.value)
        return int(row["n"]) if row else 0

    def expire(self, older_than: float) -> list[JobRecord]:
        """Delete final jobs (and their images) that finished before ``older_than``; return them."""
        return [_record(r) for r in self._rows("expire_jobs", older_than=older_than)]

    # --- fleet operations ----------------------------------------------------------

    def claim(self, agent_id: str, worker: str, limit: int = 1) -> list[JobRecord]:
        """Take up to ``limit`` of the oldest queued jobs as leases for ``agent_id``; oldest first."""
        rows = self._rows_lazy("claim_jobs", agent_id=agent_id, worker=worker, limit=limit, lease_s=self.lease_s)
        return sorted((_record(r) for r in rows), key=lambda r: (r.created_at, r.id))

    def heartbeat(self, agent_id: str, ready: bool = True) -> list[str]:
        """Renew the agent's row and all its leases; return the ids of the jobs it still holds.

        A job the agent thinks it runs but that is missing here was reaped: its
        lease expired and it belongs to the queue (or another agent) now.
        """
        rows = self._rows_lazy("heartbeat", agent_id=agent_id, ready=ready, lease_s=self.lease_s)
        return [r["id"] for r in rows]

    def reap_expired(self) -> list[JobRecord]:
        """Requeue running jobs whose lease expired, or fail those at the attempt cap; return them."""
        rows = self._rows("reap_expired", lease_s=self.lease_s, max_attempts=self.max_attempts,
                          agent_id=self.agent_id)
        return [_record(r) for r in rows]

    def fleet_counts(self) -> FleetCounts:
        """Queued and running jobs, ready agents and stored image bytes, fleet-wide."""
        row = self._row("fleet_counts", lease_s=self.lease_s)
        assert row is not None
        return FleetCounts(queued=int(row["queued"]), running=int(row["running"]),
                           ready_agents=int(row["ready_agents"]), image_bytes=int(row["image_bytes"]))

    def put_images(self, job_id: str, images: Sequence[tuple[str, bytes]]) -> int:
        """Store a job's encoded images as (name, bytes), replacing earlier ones; return their total bytes."""
        names = [name for name, _ in images]
        data = [blob for _, blob in images]
        with self._conn() as conn, conn.transaction():
            conn.execute(query("delete_images"), {"id": job_id})
            try:
                row = conn.execute(query("put_images"), {"id": job_id, "names": names, "data": data}).fetchone()
            except psycopg.errors.ForeignKeyViolation:
                row = None
            if row is None:  # raised inside the block: the transaction rolls back
                raise NotFound(f"job {job_id}: no such job (unknown id, or expired and removed)")
        return int(row["image_bytes"])

    def get_image(self, job_id: str, index: int) -> tuple[str, bytes]:
        """Image ``index`` of a job as (name, bytes), or NotFound."""
        rows = self._rows("get_image", binary=True, id=job_id, idx=index)
        row = rows[0] if rows else None
        if row is None:
            raise NotFound(f"job {job_id}: no stored image {index} (unknown job, no such index, "
                           "or expired and removed)")
        return row["name"], bytes(row["data"])

    def expire_bytes(self, max_bytes: int) -> list[JobRecord]:
        """Delete the oldest final jobs until the rest's images fit in ``max_bytes``; return them."""
        return [_record(r) for r in self._rows("expire_bytes", max_bytes=max_bytes)]
