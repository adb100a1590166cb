"""Captured failures: one record per failed job, crash, hang or kill.

Each record goes to two places, so one can be lost without losing the other:

- ``<log_dir>/failures.jsonl``: one JSON object per line, appended with a
  single ``write`` on an ``O_APPEND`` descriptor and fsynced. Grep-able, and
  shipped with the logs.
- ``<state_dir>/failures.sqlite3``: the same fields, for ``--since``/``--limit``
  queries and ``/status``'s last few.

The agent writes every record (a crashed or hung worker cannot). ``action`` is
what the agent did next: ``retry``, ``requeue``, ``fail``, ``restart``,
``kill`` or ``recycle``. ``kind`` says what failed; the agent uses ``job``
(the engine raised), ``oom``, ``crash`` (worker died), ``hang`` (heartbeat or
job timeout) and ``killed`` (worker killed from outside, e.g. ``kill -9``).

HTTP shape (``GET /v1/failures?since=&limit=``, read by ``zitops failures
--url``; :func:`zitops.logbook.failure_query.failures_payload` builds it and validates the query)::

    {"failures": [record.to_dict(), ...]}   # newest first

where ``to_dict()`` is ``{"id", "time" (ISO 8601 UTC), "ts" (epoch seconds),
"kind", "job_id", "profile", "prompt" (first 50 characters), "params" (the
request without its prompt; negative_prompt cut to 50 characters),
"exc_type", "message", "traceback", "worker_id", "vram", "action"}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from zitops.errors import InvalidRequest
from zitops.logbook.failure_params import PROMPT_PREFIX_CHARS, _jsonable, _params
from zitops.logbook.failure_retention import prune_db, prune_jsonl
from zitops.logbook.logs import get_logger

_List = list  # FailureStore.list shadows the builtin inside the class body
Action = Literal["retry", "requeue", "fail", "restart", "kill", "recycle"]
ACTIONS: tuple[str, ...] = ("retry", "requeue", "fail", "restart", "kill", "recycle")
FAILURES_JSONL = "failures.jsonl"
FAILURES_DB = "failures.sqlite3"
MAX_TRACEBACK_CHARS = 20_000
MAX_MESSAGE_CHARS = 2_000
PRUNE_EVERY_S = 3600.0
"""How often recording also prunes by age; a file past its byte cap is pruned at once."""

_log = get_logger("zitops.failures")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS failures (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    job_id TEXT,
    profile TEXT NOT NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,
    exc_type TEXT NOT NULL,
    message TEXT NOT NULL,
    traceback TEXT,
    worker_id TEXT,
    vram TEXT,
    action TEXT NOT NULL,
    agent_id TEXT
);
CREATE INDEX IF NOT EXISTS failures_ts ON failures (ts);
"""
_COLUMNS = (
    "id", "ts", "kind", "job_id", "profile", "prompt", "params",
    "exc_type", "message", "traceback", "worker_id", "vram", "action", "agent_id",
)


def iso_utc(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with a ``Z``, millisecond precision."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_iso(text: str) -> float:
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # a bare timestamp means UTC, like every time we print
    return dt.timestamp()


@dataclass(frozen=True)
class FailureRecord:
    """One captured failure, as stored and as served."""

    id: str
    ts: float
    kind: str
    job_id: str | None
    profile: str
    prompt: str
    params: dict[str, Any] = field(default_factory=dict)
    exc_type: str = ""
    message: str = ""
    traceback: str | None = None
    worker_id: str | None = None
    vram: dict[str, Any] | None = None
    action: str = "fail"
    agent_id: str | None = None
    """The fleet agent that recorded it (``store.agent_id``); None for a single agent."""

    @property
    def time(self) -> str:
        """The failure time as ISO 8601 UTC."""
        return iso_utc(self.ts)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape used in failures.jsonl and by the API."""
        data = asdict(self)
        return {"id": data.pop("id"), "time": self.time, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FailureRecord:
        """Rebuild a record from :meth:`to_dict` output (unknown keys ignored)."""
        ts = data.get("ts")
        if ts is None and isinstance(data.get("time"), str):
            ts = _parse_iso(data["time"])
        return cls(
            id=str(data.get("id") or uuid.uuid4().hex),
            ts=float(ts or 0.0),
            kind=str(data.get("kind", "job")),
            job_id=data.get("job_id"),
            profile=str(data.get("profile", "")),
            prompt=str(data.get("prompt", "")),
            params=dict(data.get("params") or {}),
            exc_type=str(data.get("exc_type", "")),
            message=str(data.get("message", "")),
            traceback=data.get("traceback"),
            worker_id=data.get("worker_id"),
            vram=data.get("vram"),
            action=str(data.get("action", "fail")),
            agent_id=data.get("agent_id"),
        )


class FailureStore:
    """Append-only failure records in JSONL and SQLite; safe across threads and processes."""

    def __init__(self, state_dir: Path, log_dir: Path, *, max_age_s: float | None = None,
                 max_bytes: int | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.log_dir = Path(log_dir)
        self.jsonl_path = self.log_dir / FAILURES_JSONL
        self.db_path = self.state_dir / FAILURES_DB
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._schema_ready = False
        self._pruned_at = 0.0

    # -- writing

    def record(
        self,
        *,
        job_id: str | None,
        profile: str,
        prompt: str,
        params: dict[str, Any],
        exc_type: str,
        message: str,
        traceback: str | None,
        worker_id: str | None,
        vram: dict[str, Any] | None,
        action: Action,
        kind: str = "job",
        agent_id: str | None = None,
    ) -> FailureRecord:
        """Write one failure to failures.jsonl and SQLite, log it at ERROR, and return it."""
        if action not in ACTIONS:
            raise ValueError(f"action {action!r} is not allowed: use one of {', '.join(ACTIONS)}")
        rec = FailureRecord(
            id=uuid.uuid4().hex,
            ts=time.time(),
            kind=kind,
            job_id=job_id,
            profile=profile,
            prompt=(prompt or "")[:PROMPT_PREFIX_CHARS],
            params=_params(params or {}),
            exc_type=exc_type,
            message=(message or "")[:MAX_MESSAGE_CHARS],
            traceback=traceback[-MAX_TRACEBACK_CHARS:] if traceback else None,
            worker_id=worker_id,
            vram=_jsonable(vram) if vram is not None else None,
            action=action,
            agent_id=agent_id,
        )
        errors: list[str] = []
        with self._lock:
            try:
                self._append_jsonl(rec)
            except OSError as exc:
                errors.append(f"jsonl: {exc}")
            try:
                self._insert(rec)
            except (OSError, sqlite3.Error) as exc:
                errors.append(f"sqlite: {exc}")
            if self._prune_due():
                try:
                    self._prune(time.time())
                except (OSError, sqlite3.Error) as exc:
                    errors.append(f"prune: {exc}")
        _log.error(
            "job_failed" if kind in ("job", "oom") else f"worker_{kind}",
            failure_id=rec.id, kind=kind, job_id=job_id, worker_id=worker_id,
            exc_type=exc_type, message=rec.message, action=action, profile=profile, agent_id=agent_id,
        )
        if errors:
            # Never raise from here: the caller is handling a failure already.
            _log.critical("failure_record_not_written", failure_id=rec.id, errors=errors)
        return rec

    # -- retention

    def _prune_due(self) -> bool:
        if self.max_age_s is None and self.max_bytes is None:
            return False
        if time.time() - self._pruned_at >= PRUNE_EVERY_S:
            return True
        if self.max_bytes is None:
            return False
        return any(p.exists() and p.stat().st_size > self.max_bytes for p in (self.jsonl_path, self.db_path))

    def prune(self, now: float | None = None) -> int:
        """Drop records older than ``max_age_s`` and the oldest beyond ``max_bytes``, in both files.

        Returns how many JSONL lines went. Done by :meth:`record` hourly and
        whenever a file passes its cap.
        """
        with self._lock:
            return self._prune(time.time() if now is None else now)

    def _prune(self, now: float) -> int:
        self._pruned_at = now
        cutoff = now - self.max_age_s if self.max_age_s is not None else None
        removed = prune_jsonl(self.jsonl_path, cutoff, self.max_bytes)
        if self.db_path.exists():
            prune_db(self.db_path, cutoff, self.max_bytes)
        if removed:
            _log.info("failure_records_pruned", removed=removed, path=str(self.jsonl_path))
        return removed

    def _append_jsonl(self, rec: FailureRecord) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(rec.to_dict(), ensure_ascii=False, default=str) + "\n").encode("utf-8")
        fd = os.open(self.jsonl_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            # One write on an O_APPEND descriptor: concurrent writers never interleave.
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=10.0)
        try:
            yield conn
        finally:
            conn.close()

    def _insert(self, rec: FailureRecord) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._db() as conn:
            self._ensure_schema(conn)
            row = rec.to_dict()
            values = [
                json.dumps(row[c], ensure_ascii=False, default=str) if c in ("params", "vram") and row[c] is not None
                else row[c]
                for c in _COLUMNS
            ]
            with conn:
                conn.execute(
                    f"INSERT INTO failures ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                    values,
                )

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        """Create the table; a file from before ``agent_id`` gets the column (NULL for its old rows)."""
        if self._schema_ready:
            return
        conn.executescript(_SCHEMA)
        if "agent_id" not in {row[1] for row in conn.execute("PRAGMA table_info(failures)")}:
            conn.execute("ALTER TABLE failures ADD COLUMN agent_id TEXT")
        self._schema_ready = True

    # -- reading

    def list(self, since: float | None = None, limit: int = 50) -> list[FailureRecord]:
        """Records newest first, optionally only those at or after ``since`` (epoch seconds)."""
        if limit < 1:
            raise InvalidRequest(f"limit must be at least 1, got {limit}")
        if self.db_path.exists():
            try:
                return self._query(since, limit)
            except sqlite3.Error as exc:
                _log.warning("failures_db_unreadable", path=str(self.db_path), error=str(exc))
        return self._scan_jsonl(since, limit)

    def recent(self, n: int = 10) -> _List[dict[str, Any]]:
        """The last ``n`` records as dicts (for /status)."""
        return [r.to_dict() for r in self.list(limit=max(1, n))]

    def _query(self, since: float | None, limit: int) -> _List[FailureRecord]:
        with self._db() as conn:
            self._ensure_schema(conn)
            conn.row_factory = sqlite3.Row
            sql = f"SELECT {', '.join(_COLUMNS)} FROM failures"
            args: _List[Any] = []
            if since is not None:
                sql += " WHERE ts >= ?"
                args.append(since)
            sql += " ORDER BY ts DESC LIMIT ?"
            args.append(limit)
            rows = conn.execute(sql, args).fetchall()
        out = []
        for row in rows:
            data = dict(row)
            for col in ("params", "vram"):
                if data[col] is not None:
                    data[col] = json.loads(data[col])
            out.append(FailureRecord.from_dict(data))
        return out

    def _scan_jsonl(self, since: float | None, limit: int) -> _List[FailureRecord]:
        # The fallback when the SQLite file is gone: the JSONL has everything.
        if not self.jsonl_path.exists():
            return []
        records = []
        with self.jsonl_path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    rec = FailureRecord.from_dict(json.loads(line))
                except (ValueError, TypeError, AttributeError):
                    continue  # a torn last line after a power cut
                if since is None or rec.ts >= since:
                    records.append(rec)
        records.sort(key=lambda r: r.ts, reverse=True)
        return records[:limit]
