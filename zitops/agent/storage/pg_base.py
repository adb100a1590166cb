"""The plumbing under :class:`~zitops.agent.storage.store_pg.PgJobStore`: its connection pool, the
breaker that marks the server unreachable, the client-side deadlines every call waits at most, and the
conversion of rows into :class:`~zitops.agent.contract.JobRecord`.

Calls run on the store's own threads; the caller waits :data:`LOOP_DEADLINE_S` on an event loop's
thread, :data:`DEADLINE_S` elsewhere, :data:`BLOB_DEADLINE_S` for image bytes and bulk deletes
(store_pg.py's docstring says why).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.storage.pg_connect import STATEMENT_TIMEOUT_MS, Breaker, PgConnector, is_down
from zitops.agent.storage.pg_listen import PgListener
from zitops.agent.storage.pg_schema import migrate, query
from zitops.engine.request import GenerationRequest
from zitops.errors import Conflict, NotFound, StoreUnavailable, ZitopsError

LOOP_DEADLINE_S = 1.5
"""The longest an event loop's thread waits for one store call: /livez answers within ~2 s even
while a partition swallows the store's packets (the first missed deadline trips the breaker)."""

DEADLINE_S = 3.0
"""The longest any other thread waits for one short store call."""

BLOB_DEADLINE_S = STATEMENT_TIMEOUT_MS / 1000 + 2.0
"""The longest a caller waits for image bytes or a bulk delete (the server's statement_timeout, plus slack)."""

_STORE_THREAD = threading.local()
R = TypeVar("R")


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _inside(fn: Callable[[], R]) -> R:
    _STORE_THREAD.inside = True
    return fn()


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
        agent=row["agent_id"],
    )


def _info_json(info: dict[str, Any]) -> Jsonb:
    return Jsonb(info, dumps=lambda obj: json.dumps(obj, default=str))


class PgStoreBase:
    """The pool, breaker and deadlines of a PostgreSQL job store (the arguments are PgJobStore's)."""

    def __init__(self, url: str, *, password_file: str | Path | None = None, agent_id: str | None = None,
                 lease_s: float = 30.0, max_attempts: int = 2, pool_size: int = 4,
                 timeout_s: float = 2.0, probe_interval_s: float = 1.0) -> None:
        self.connector = PgConnector(url, password_file=password_file, connect_timeout_s=timeout_s)
        self.agent_id = agent_id or default_agent_id()
        self.lease_s = float(lease_s)
        self.max_attempts = max_attempts
        self._pool_size, self._timeout_s = pool_size, timeout_s
        self._breaker = Breaker(self._reopen, probe_interval_s, on_trip=self._close_pool)
        # More threads than connections: a few may sit on a dead socket until its timeouts free them.
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=pool_size * 4,
                                                         thread_name_prefix="zitops-store")
        self._pool = self._open_pool()
        try:
            with self._pool.connection() as conn:
                migrate(conn)
        except Exception as exc:  # psycopg.Error, PoolTimeout, or a newer schema
            self._pool.close()
            raise self.connector.unavailable(exc) from exc

    # --- plumbing -----------------------------------------------------------------

    def watch(self, on_change: Callable[[str | None], None]) -> None:
        """``on_change(reason)`` once when the store becomes unreachable, ``on_change(None)`` when it is back."""
        self._breaker.watch(on_change)

    def _bounded(self, fn: Callable[[], R], name: str, blob: bool) -> R:
        self._breaker.check()
        try:
            future = self._io.submit(_inside, fn)
        except RuntimeError:  # closed
            raise StoreUnavailable(f"job store {self.connector.display}: closed") from None
        deadline = BLOB_DEADLINE_S if blob else LOOP_DEADLINE_S if _on_event_loop() else DEADLINE_S
        try:
            return future.result(timeout=deadline)
        except concurrent.futures.TimeoutError:
            reason = f"job store {self.connector.display}: no answer to {name} within {deadline:g} s"
            self._breaker.trip(reason)
            raise StoreUnavailable(reason) from None

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
        try:
            # "Back" means every connection is up: calls that arrive together after a heal
            # would otherwise wait on the pool's growth and, on a starved host, trip again.
            pool.resize(self._pool_size, self._pool_size)
            pool.wait(timeout=self._timeout_s * 2)
        except Exception:
            pool.close()
            raise  # still not reachable as a whole: the breaker probes again
        old, self._pool = self._pool, pool
        old.close(timeout=0)
        if self._breaker.stopped:  # close() ran meanwhile
            pool.close()

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[DictRow]]:
        self._breaker.check()
        pool = self._pool
        try:
            with pool.connection() as conn:
                yield conn
        except ZitopsError:
            raise
        except Exception as exc:
            if not (isinstance(exc, psycopg.Error) or is_down(exc)):
                raise
            error = self.connector.unavailable(exc)
            # A call begun on the pool that an outage's probe has since replaced says nothing of the new one.
            if is_down(exc) and pool is self._pool:
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

    def _changed(self, row: DictRow | None, job_id: str, action: str, attempt: int | None = None) -> JobRecord:
        """The updated record, or why the fenced update changed nothing."""
        if row is not None:
            return _record(row)
        current = self._row("get_job", id=job_id)
        if current is None:
            raise NotFound(f"job {job_id}: no such job (unknown id, or expired and removed)")
        held = "" if attempt is None else f" (this agent holds attempt {attempt})"
        if current["status"] == JobStatus.RUNNING.value:
            raise Conflict(f"job {job_id}: is running on agent {current['agent_id']} (attempt "
                           f"{current['attempts']}); this agent cannot {action} it{held}: its lease moved on")
        raise Conflict(f"job {job_id}: is {current['status']} (attempt {current['attempts']}); "
                       f"this agent cannot {action} it{held}")

    def available(self) -> tuple[bool, str | None]:
        """(True, None) while the store answers; (False, reason) while it is known down."""
        reason = self._breaker.reason
        return reason is None, reason

    def close(self) -> None:
        """Close the pool (again is harmless)."""
        self._breaker.close()
        self._io.shutdown(wait=False, cancel_futures=True)
        self._pool.close()

    def listener(self, retry_s: float = 1.0) -> PgListener:
        """A LISTEN connection for wake-ups (queued jobs, finished jobs) on this store's server."""
        return PgListener(self.connector, retry_s=retry_s)
