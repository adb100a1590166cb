"""The shared job store: PostgreSQL, for a fleet of agents behind one endpoint.

A drop-in for :class:`zitops.agent.storage.jobs.JobStore` (same methods, same
records, same errors) plus the fleet operations: leases claimed with
``FOR UPDATE SKIP LOCKED``, heartbeats, the reaper, fleet-wide counts, and
images kept in PostgreSQL so any agent serves any job. Every query is in
``sql/queries.sql``; times are the server's. docs/fleet.md has the design.

Every method is one short transaction on a pooled connection and raises
:class:`StoreUnavailable` (never a driver exception) while the server cannot
be used; the pool reconnects by itself when it is back.

No caller waits on the network unbounded: every method runs on the store's
own threads and its caller waits at most a client-side deadline
(pg_base.py's :data:`LOOP_DEADLINE_S` on an event loop's thread, :data:`DEADLINE_S`
elsewhere, :data:`BLOB_DEADLINE_S` for image bytes and bulk deletes). A
missed deadline marks the store unreachable at once, so every later call
fails fast until the breaker's probe reconnects; the thread left behind is
freed by the connection's own bounds (tcp_user_timeout, statement_timeout,
see pg_connect.py). A partition that drops packets costs a caller one
deadline, never the event loop's life.

The pool, the breaker and the deadlines are :class:`~zitops.agent.storage.pg_base.PgStoreBase`'s.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from zitops.agent.contract import JobRecord, JobStatus, priority_of
from zitops.agent.storage.pg_base import _STORE_THREAD, PgStoreBase, _info_json, _record
from zitops.agent.storage.pg_schema import query
from zitops.engine.request import GenerationRequest
from zitops.errors import Conflict, NotFound, QueueFull

OWNER_LOCK = 0x7A17_0002
"""``pg_advisory_xact_lock``'s first key for one owner's submits (the second is a hash of the owner)."""

P = ParamSpec("P")
R = TypeVar("R")


def bounded(blob: bool = False) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run a PgJobStore method on the store's threads; its caller waits at most a deadline."""
    def wrap(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if getattr(_STORE_THREAD, "inside", False):  # a method calling another: already bounded
                return method(*args, **kwargs)
            store = args[0]
            assert isinstance(store, PgJobStore)
            return store._bounded(functools.partial(method, *args, **kwargs), method.__name__, blob)
        return call
    return wrap


@dataclass(frozen=True)
class FleetCounts:
    """The fleet's load, for back-pressure and /metrics."""

    queued: int
    running: int
    ready_agents: int
    image_bytes: int


class PgJobStore(PgStoreBase):
    """Jobs in PostgreSQL, shared by every agent of a fleet.

    ``agent_id`` names this agent in leases and failure records; it must be
    unique in the fleet and stable across restarts (``recover`` takes back
    the jobs the same id was running). ``lease_s`` is how long a claim lives
    without a heartbeat; heartbeat at a third of it. ``max_attempts`` caps how
    often a job may be started (today's rule: a job that kills workers twice fails).
    """

    # --- JobStore's methods ----------------------------------------------------------

    @bounded()
    def add(self, request: GenerationRequest, owner: str | None = None,
            owner_cap: int | None = None, job_id: str | None = None) -> JobRecord:
        """Store a new queued job of ``owner`` and return it (the fleet is notified).

        With ``owner_cap``: QueueFull, and nothing stored, when that owner
        already has that many jobs waiting (queue.per_token_share). With
        ``job_id``: the job of that id when it is stored already (any agent's).
        """
        with self._conn() as conn, conn.transaction():
            if owner is not None and owner_cap is not None:
                conn.execute(query("lock_owner"), {"namespace": OWNER_LOCK, "owner": owner})
            row = conn.execute(query("add_job"), {"id": job_id or uuid.uuid4().hex, "owner": owner,
                                                  "request": Jsonb(request.to_dict()), "owner_cap": owner_cap}).fetchone()
            if row is None and job_id is not None:
                row = conn.execute(query("get_job"), {"id": job_id}).fetchone()
        if row is None:
            raise QueueFull(f"queue.per_token_share: this token already has {owner_cap} jobs waiting, its "
                            "share of the queue; retry when one has started")
        return _record(row)

    @bounded()
    def get(self, job_id: str) -> JobRecord:
        """The job, or NotFound."""
        row = self._row("get_job", id=job_id)
        if row is None:
            raise NotFound(f"job {job_id}: no such job (unknown id, or expired and removed)")
        return _record(row)

    @bounded()
    def start(self, job_id: str, worker: str) -> JobRecord:
        """Start a queued job on ``worker`` of this agent: count the attempt and take a lease."""
        row = self._row("start_job", id=job_id, worker=worker, agent_id=self.agent_id, lease_s=self.lease_s)
        return self._changed(row, job_id, "start")

    @bounded()
    def requeue(self, job_id: str, error: str, uncount: bool = False, *, attempt: int | None = None) -> JobRecord:
        """Put a running job back in the queue (its worker died); keep why.

        ``uncount`` takes back the attempt when the job never reached a worker.
        ``attempt`` (here and in every outcome): the attempt this agent holds;
        the write changes nothing unless it is the job's current one (sql/queries.sql's fence).
        """
        row = self._row("requeue_job", id=job_id, error=error or None, uncount=1 if uncount else 0,
                        agent_id=self.agent_id, attempt=attempt)
        return self._changed(row, job_id, "requeue", attempt)

    @bounded()
    def succeed(self, job_id: str, images: tuple[str, ...], info: dict[str, Any], *,
                attempt: int | None = None) -> JobRecord:
        """Record a finished job and publish its attempt's images (the bytes go through ``put_images`` first)."""
        row = self._row("succeed_job", id=job_id, images=Jsonb(list(images)), info=_info_json(info),
                        agent_id=self.agent_id, attempt=attempt)
        return self._changed(row, job_id, "succeed", attempt)

    @bounded()
    def fail(self, job_id: str, error: str, *, attempt: int | None = None) -> JobRecord:
        """Record a failed job and why."""
        row = self._row("fail_job", id=job_id, error=error, agent_id=self.agent_id, attempt=attempt)
        return self._changed(row, job_id, "fail", attempt)

    @bounded()
    def cancel(self, job_id: str, *, running: bool = False, attempt: int | None = None) -> JobRecord:
        """Cancel a queued job (with ``running``: a running one, which its worker stopped); Conflict otherwise."""
        row = self._row("cancel_running_job" if running else "cancel_job", id=job_id, agent_id=self.agent_id,
                        attempt=attempt)
        if row is not None:
            return _record(row)
        if running and attempt is not None:
            return self._changed(None, job_id, "cancel", attempt)
        record = self.get(job_id)
        raise Conflict(f"job {job_id}: is {record.status.value}; only queued jobs can be cancelled")

    @bounded()
    def recover(self, keep: Collection[str] = ()) -> list[str]:
        """After a restart: this agent's running jobs but ``keep`` go back to queued; all queued ids, oldest first."""
        with self._conn() as conn, conn.transaction():
            conn.execute(query("recover_jobs"), {"agent_id": self.agent_id, "max_attempts": self.max_attempts,
                                                 "keep": list(keep)})
            rows = conn.execute(query("queued_ids")).fetchall()
        return [r["id"] for r in rows]

    @bounded()
    def count(self, status: JobStatus) -> int:
        """How many jobs of the fleet have ``status``."""
        row = self._row("count_jobs", status=status.value)
        return int(row["n"]) if row else 0

    @bounded(blob=True)
    def expire(self, max_age_s: float) -> list[JobRecord]:
        """Delete final jobs (and their images) that finished more than ``max_age_s`` ago by the server's clock."""
        return [_record(r) for r in self._rows("expire_jobs", max_age_s=max_age_s)]

    # --- fleet operations ----------------------------------------------------------

    @bounded()
    def claim(self, agent_id: str, worker: str, limit: int = 1) -> list[JobRecord]:
        """Take up to ``limit`` of the oldest queued jobs as leases for ``agent_id``; oldest first."""
        rows = self._rows_lazy("claim_jobs", agent_id=agent_id, worker=worker, limit=limit, lease_s=self.lease_s)
        return sorted((_record(r) for r in rows), key=lambda r: (-priority_of(r.request.extra), r.created_at, r.id))

    @bounded()
    def heartbeat(self, agent_id: str, ready: bool = True, held: Sequence[str] | None = None) -> list[str]:
        """Renew the agent's row and its leases (with ``held``: only those); return the ids renewed.

        A job the agent thinks it runs but that is missing here was reaped: its
        lease expired and it belongs to the queue (or another agent) now.
        """
        rows = self._rows_lazy("heartbeat", agent_id=agent_id, ready=ready, lease_s=self.lease_s,
                               held=None if held is None else list(held))
        return [r["id"] for r in rows]

    @bounded()
    def reap_expired(self) -> list[JobRecord]:
        """Requeue running jobs whose lease expired, or fail those at the attempt cap; return them."""
        rows = self._rows("reap_expired", lease_s=self.lease_s, max_attempts=self.max_attempts,
                          agent_id=self.agent_id)
        return [_record(r) for r in rows]

    @bounded()
    def fail_overdue(self) -> list[JobRecord]:
        """Fail the fleet's queued jobs past their max_queue_s (the server's clock), each by one agent; return them."""
        return [_record(r) for r in self._rows("fail_overdue")]

    @bounded()
    def fleet_counts(self) -> FleetCounts:
        """Queued and running jobs, ready agents and stored image bytes, fleet-wide."""
        row = self._row("fleet_counts", lease_s=self.lease_s)
        assert row is not None
        return FleetCounts(queued=int(row["queued"]), running=int(row["running"]),
                           ready_agents=int(row["ready_agents"]), image_bytes=int(row["image_bytes"]))

    @bounded(blob=True)
    def put_images(self, job_id: str, images: Sequence[tuple[str, bytes]], *, attempt: int | None = None) -> int:
        """Store the images (name, bytes) of the attempt this agent holds, unpublished; their total bytes.

        Conflict or NotFound (nothing stored) when the job is not running here at ``attempt``.
        """
        row = self._row("put_images", id=job_id, names=[name for name, _ in images],
                        data=[blob for _, blob in images], agent_id=self.agent_id, attempt=attempt)
        if row is None:
            self._changed(None, job_id, "store images of", attempt)
        assert row is not None
        return int(row["image_bytes"])

    @bounded(blob=True)
    def get_image(self, job_id: str, index: int) -> tuple[str, bytes]:
        """Image ``index`` of a job as (name, bytes), or NotFound."""
        rows = self._rows("get_image", binary=True, id=job_id, idx=index)
        row = rows[0] if rows else None
        if row is None:
            raise NotFound(f"job {job_id}: no stored image {index} (unknown job, no such index, "
                           "or expired and removed)")
        return row["name"], bytes(row["data"])

    @bounded(blob=True)
    def expire_bytes(self, max_bytes: int) -> list[JobRecord]:
        """Delete the oldest final jobs until the rest's images fit in ``max_bytes``; return them."""
        return [_record(r) for r in self._rows("expire_bytes", max_bytes=max_bytes)]

    def run(self, sql: str, **params: Any) -> list[DictRow]:
        """One statement of another table's owner (the webhook ledger), in a short transaction; its rows."""
        with self._conn() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []
