"""The durable job store: SQLite (WAL) in ``<state_dir>/jobs.sqlite3``.

Accepted jobs are written here before they are queued, so they survive an
agent restart, kill -9 included. ``attempts`` counts how many times a job was
handed to a worker; the dispatcher uses it to requeue a crashed job once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.storage.store_errors import translated
from zitops.engine.request import INPUT_IMAGES, GenerationRequest
from zitops.errors import Conflict, NotFound, QueueFull

DB_NAME = "jobs.sqlite3"

_guarded = translated(lambda store: store.path)
"""sqlite3.Error (disk full, read-only, I/O) leaves every method as StoreUnavailable or DiskFull."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    images TEXT NOT NULL DEFAULT '[]',
    worker TEXT,
    info TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""

MIGRATIONS: tuple[str, ...] = (
    # 1: the tenant that submitted the job (SHA-256 hex of its token); NULL for
    # jobs from before tenants, which only admin tokens (or an agent without tokens) see.
    "ALTER TABLE jobs ADD COLUMN owner TEXT;"
    "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, status);",
    # 2: a job turning final keeps its input images' sizes, not their bytes: nothing reads them again
    # (answers show GenerationRequest.public_params), and an img2img job's request was 4 MB for
    # result_ttl_s (the H100 soak, 2026-12-07: the store grew 0.76 MiB a job). Pages freed here are reused.
    "CREATE TRIGGER IF NOT EXISTS jobs_final_request AFTER UPDATE OF status ON jobs "
    "WHEN NEW.status IN ('succeeded', 'failed', 'cancelled') "
    "AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled') AND ("
    + " OR ".join(f"json_type(NEW.request, '$.{key}') = 'text'" for key in INPUT_IMAGES)
    + ") BEGIN "
    "UPDATE jobs SET request = json_set(request, "
    + ", ".join(f"'$.{key}', CASE WHEN json_type(request, '$.{key}') = 'text' "
                f"THEN '<' || length(json_extract(request, '$.{key}')) || ' base64 characters>' "
                f"ELSE json_extract(request, '$.{key}') END" for key in INPUT_IMAGES)
    + ") WHERE id = NEW.id; END;",
)
"""Numbered schema changes; ``PRAGMA user_version`` records how many ran."""

_COLUMNS = "id, status, request, created_at, started_at, finished_at, error, attempts, images, worker, info, owner"


def _record(row: tuple[Any, ...]) -> JobRecord:
    return JobRecord(
        id=row[0], status=JobStatus(row[1]), request=GenerationRequest.from_dict(json.loads(row[2])),
        created_at=row[3], started_at=row[4], finished_at=row[5], error=row[6], attempts=row[7],
        images=tuple(json.loads(row[8])), worker=row[9], info=json.loads(row[10]), owner=row[11],
    )


def migrate(db: sqlite3.Connection) -> int:
    """Run the migrations this database has not seen yet; return its schema version."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    for number, script in enumerate(MIGRATIONS, 1):
        if number > version:
            db.executescript(f"BEGIN; {script} PRAGMA user_version = {number}; COMMIT;")
            version = number
    return version


class JobStore:
    """Jobs in SQLite; every method is one short transaction."""

    def __init__(self, state_dir: str | Path) -> None:
        Path(state_dir).mkdir(mode=0o750, parents=True, exist_ok=True)
        self.path = Path(state_dir) / DB_NAME
        # One connection shared by the event loop and the scheduler's thread,
        # serialised by a lock; every statement is short.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            migrate(self._db)

    def close(self) -> None:
        """Close the database (again is harmless)."""
        with self._lock:
            self._db.close()

    def _one(self, job_id: str) -> JobRecord:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id}: no such job (unknown id, or expired and removed)")
        return _record(row)

    @_guarded
    def add(self, request: GenerationRequest, owner: str | None = None,
            owner_cap: int | None = None, job_id: str | None = None) -> JobRecord:
        """Store a new queued job of ``owner`` and return it.

        With ``owner_cap``: QueueFull, and nothing stored, when that owner
        already has that many jobs waiting (queue.per_token_share). With
        ``job_id``: the job of that id when it is stored already.
        """
        with self._lock:
            if job_id is not None and self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone():
                return self._one(job_id)
            job_id = job_id or uuid.uuid4().hex
            if owner is not None and owner_cap is not None:
                waiting = int(self._db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status = ?",
                    (owner, JobStatus.QUEUED.value)).fetchone()[0])
                if waiting >= owner_cap:
                    raise QueueFull(
                        f"queue.per_token_share: this token already has {waiting} jobs waiting, its share "
                        f"of the queue ({owner_cap}); retry when one has started")
            self._db.execute(
                "INSERT INTO jobs (id, status, request, created_at, owner) VALUES (?, ?, ?, ?, ?)",
                (job_id, JobStatus.QUEUED.value, json.dumps(request.to_dict()), time.time(), owner),
            )
            return self._one(job_id)

    @_guarded
    def get(self, job_id: str) -> JobRecord:
        """The job, or NotFound."""
        with self._lock:
            return self._one(job_id)

    @_guarded
    def start(self, job_id: str, worker: str) -> JobRecord:
        """Mark a queued job running on ``worker`` and count the attempt."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = ?, started_at = ?, worker = ?, attempts = attempts + 1 "
                "WHERE id = ?", (JobStatus.RUNNING.value, time.time(), worker, job_id),
            )
            return self._one(job_id)

    @_guarded
    def requeue(self, job_id: str, error: str, uncount: bool = False) -> JobRecord:
        """Put a running job back in the queue (its worker died); keep why.

        ``uncount`` takes back the attempt when the job never reached a worker.
        """
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = ?, worker = NULL, error = ?, attempts = attempts - ? "
                "WHERE id = ?",
                (JobStatus.QUEUED.value, error or None, 1 if uncount else 0, job_id),
            )
            return self._one(job_id)

    @_guarded
    def succeed(self, job_id: str, images: tuple[str, ...], info: dict[str, Any]) -> JobRecord:
        """Record a finished job's images."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, images = ?, info = ?, error = NULL "
                "WHERE id = ?",
                (JobStatus.SUCCEEDED.value, time.time(), json.dumps(list(images)),
                 json.dumps(info, default=str), job_id),
            )
            return self._one(job_id)

    @_guarded
    def fail(self, job_id: str, error: str) -> JobRecord:
        """Record a failed job and why."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                (JobStatus.FAILED.value, time.time(), error, job_id),
            )
            return self._one(job_id)

    @_guarded
    def cancel(self, job_id: str, *, running: bool = False) -> JobRecord:
        """Cancel a queued job (with ``running``: a running one, which its worker stopped); Conflict otherwise."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status = ?, finished_at = ? WHERE id = ? AND status = ?",
                (JobStatus.CANCELLED.value, time.time(), job_id,
                 (JobStatus.RUNNING if running else JobStatus.QUEUED).value),
            )
            record = self._one(job_id)
            if cur.rowcount == 0:
                raise Conflict(f"job {job_id}: is {record.status.value}; only queued jobs can be cancelled")
            return record

    @_guarded
    def recover(self, keep: Collection[str] = ()) -> list[str]:
        """After a restart: running jobs go back to queued, except ``keep`` (finished jobs whose images wait on
        this host for the object store); return all queued ids, oldest first."""
        kept = tuple(keep)
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = ?, worker = NULL, "
                "error = 'requeued: the agent stopped while this job was running' WHERE status = ?"
                + (f" AND id NOT IN ({', '.join('?' * len(kept))})" if kept else ""),
                (JobStatus.QUEUED.value, JobStatus.RUNNING.value, *kept),
            )
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE status = ? ORDER BY seq", (JobStatus.QUEUED.value,)
            ).fetchall()
        return [r[0] for r in rows]

    @_guarded
    def count(self, status: JobStatus) -> int:
        """How many jobs have ``status``."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status.value,)).fetchone()
        return int(row[0])

    @_guarded
    def expire(self, max_age_s: float) -> list[JobRecord]:
        """Delete final jobs that finished more than ``max_age_s`` ago (this agent's clock wrote them); return them."""
        final = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
        older_than = time.time() - max_age_s
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE status IN (?, ?, ?) AND finished_at < ?",
                (*final, older_than),
            ).fetchall()
            self._db.executemany("DELETE FROM jobs WHERE id = ?", [(r[0],) for r in rows])
        return [_record(r) for r in rows]
