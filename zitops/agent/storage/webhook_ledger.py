"""Durable webhook deliveries in the agent's SQLite job store (``webhook_deliveries``).

A job's target (URL and pinned address) is part of the stored job
(``request.extra["webhook"]``), written in the same transaction that
accepts it. This table holds only the delivery's progress: a row appears
once the job is final and stays until the job expires. ``sending`` rows
carry a claim that runs out (``claimed_until``), so a delivery cut short by
a restart is taken up again, and only one attempt per job runs at a time.
The ledger owns this table through a connection of its own to the same
file; it only reads ``jobs``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    job_id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    claimed_until REAL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS webhook_due ON webhook_deliveries (state, next_at);
"""

_FINAL = "('succeeded', 'failed', 'cancelled')"
_JOB = ("j.id, j.status, j.error, j.images, j.created_at, j.finished_at, "
        "json_extract(j.request, '$.extra.webhook')")


@dataclass(frozen=True)
class Delivery:
    """One claimed delivery: the job as stored, its target, and the attempts made so far."""

    job: dict[str, Any]  # id, status, error, images (count), created_at, finished_at
    url: str
    address: str
    attempts: int


def delivery(row: Any, attempts: int) -> Delivery | None:
    """A Delivery from (id, status, error, images json, created_at, finished_at, webhook json); None without a target."""
    hook = json.loads(row[6]) if isinstance(row[6], str) else row[6]
    if not isinstance(hook, dict) or not hook.get("url"):
        return None
    images = json.loads(row[3]) if isinstance(row[3], str) else row[3]
    job = {"id": row[0], "status": row[1], "error": row[2], "images": len(images or []),
           "created_at": row[4], "finished_at": row[5]}
    return Delivery(job=job, url=str(hook["url"]), address=str(hook.get("address") or ""), attempts=attempts)


class SqliteLedger:
    """Webhook deliveries next to the jobs in ``jobs.sqlite3``; every method is one short transaction."""

    def __init__(self, db_path: Path) -> None:
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection (again is harmless)."""
        with self._lock:
            self._db.close()

    def open(self, job_id: str, claim_s: float) -> Delivery | None:
        """The first delivery of a final job with a webhook, claimed by the caller; None when it has none or one exists."""
        now = time.time()
        with self._lock:
            row = self._db.execute(
                f"SELECT {_JOB} FROM jobs j WHERE j.id = ? AND j.status IN {_FINAL} "
                "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.job_id = j.id)", (job_id,)).fetchone()
            found = delivery(row, 0) if row is not None else None
            if found is None:
                return None
            self._db.execute("INSERT INTO webhook_deliveries (job_id, state, next_at, claimed_until, created_at) "
                             "VALUES (?, 'sending', ?, ?, ?)", (job_id, now, now + claim_s, now))
        return found

    def sweep(self) -> int:
        """Open pending deliveries for final jobs with a webhook and none yet (finished while no one listened)."""
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO webhook_deliveries (job_id, state, next_at, created_at) "
                f"SELECT j.id, 'pending', ?, ? FROM jobs j WHERE j.status IN {_FINAL} "
                "AND json_extract(j.request, '$.extra.webhook.url') IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.job_id = j.id)", (now, now))
            self._db.execute("DELETE FROM webhook_deliveries WHERE job_id NOT IN (SELECT id FROM jobs)")
        return cur.rowcount

    def claim(self, claim_s: float, limit: int) -> list[Delivery]:
        """Due deliveries (pending and due, or sending with a claim that ran out), claimed for ``claim_s``."""
        now = time.time()
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_JOB}, d.attempts FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id "
                "WHERE (d.state = 'pending' AND d.next_at <= ?) OR (d.state = 'sending' AND d.claimed_until < ?) "
                "ORDER BY d.next_at LIMIT ?", (now, now, limit)).fetchall()
            self._db.executemany("UPDATE webhook_deliveries SET state = 'sending', claimed_until = ? WHERE job_id = ?",
                                 [(now + claim_s, r[0]) for r in rows])
        return [d for r in rows if (d := delivery(r, int(r[7]))) is not None]

    def settle(self, job_id: str, *, attempts: int, state: str, next_in_s: float,
               status: int | None, error: str | None) -> None:
        """Record an attempt: ``delivered``, ``failed`` (gave up), or ``pending`` again after ``next_in_s``."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_at = ?, claimed_until = NULL, "
                "last_status = ?, last_error = ?, done_at = ? WHERE job_id = ?",
                (state, attempts, now + next_in_s, status, error, now if state in ("delivered", "failed") else None,
                 job_id))

    def summary(self, limit: int = 10) -> dict[str, Any]:
        """Deliveries by state, and the newest ``limit`` (for /status and the console)."""
        with self._lock:
            counts = dict(self._db.execute("SELECT state, count(*) FROM webhook_deliveries GROUP BY state").fetchall())
            rows = self._db.execute(
                "SELECT job_id, state, attempts, last_status, last_error, created_at, done_at "
                "FROM webhook_deliveries ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        keys = ("job_id", "state", "attempts", "last_status", "last_error", "created_at", "done_at")
        return {"counts": counts, "recent": [dict(zip(keys, r, strict=True)) for r in rows]}
