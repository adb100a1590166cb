"""Store failures as :class:`~zitops.errors.StoreUnavailable`, and job outcomes the store could not take yet.

SQLite on a full, read-only or failing disk raises ``sqlite3.Error`` from any
call. :func:`translated` turns that into one line that says what failed and
what to do: :class:`~zitops.errors.DiskFull` (HTTP 507) when the disk is
full, :class:`~zitops.errors.StoreUnavailable` (503) otherwise, the same
errors the PostgreSQL store raises. A job whose final state the store
refused is kept in :class:`Unsaved`: it is final in memory (GET shows it,
waiters get the error at once, not after their timeout) and written to the
store as soon as the store takes writes again.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from zitops.agent.contract import JobRecord, JobStatus
from zitops.errors import DiskFull, NotFound, StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")

DISK_FULL_CODES = frozenset({sqlite3.SQLITE_FULL})
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's SQLITE_FULL or an OSError saying the disk (or quota) is full."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) in DISK_FULL_CODES or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def store_error(exc: BaseException, where: Path | str) -> StoreUnavailable:
    """The ZitopsError for a store (or output) failure under ``where``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if is_disk_full(exc):
        return DiskFull(f"the disk under {where} is full ({text}); free space there (or raise the volume's "
                        "size), then retry; nothing already accepted is lost")
    return StoreUnavailable(f"the job store at {where} cannot be used ({type(exc).__name__}: {text}); check "
                            "that the disk is writable and healthy, then retry")


def translated(where: Callable[[Any], Path | str]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a store method so ``sqlite3.Error`` leaves it as StoreUnavailable or DiskFull."""
    def wrap(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(*args, **kwargs)
            except sqlite3.Error as exc:
                raise store_error(exc, where(args[0])) from exc
        return call
    return wrap


@dataclass(frozen=True)
class Outcome:
    """A job's final state that the store refused: failed, with why, and the store's error."""

    error: str
    cause: StoreUnavailable
    finished_at: float


class Unsaved:
    """Jobs final in memory whose state the store has not taken yet; the dispatcher retries each tick."""

    def __init__(self) -> None:
        self.jobs: dict[str, Outcome] = {}

    def fail(self, job_id: str, error: str, cause: StoreUnavailable) -> None:
        """Keep ``job_id`` failed with ``error`` until :meth:`flush` writes it."""
        self.jobs[job_id] = Outcome(error, cause, time.time())

    def overlay(self, record: JobRecord) -> JobRecord:
        """``record`` as memory knows it: failed when its failure is still unsaved."""
        out = self.jobs.get(record.id)
        if out is None or record.status.final:
            return record
        return dataclasses.replace(record, status=JobStatus.FAILED, finished_at=out.finished_at,
                                   error=f"{out.error}; the job store could not record this yet: {out.cause}")

    def check(self, job_id: str) -> None:
        """Raise the store's error for a job whose failure is unsaved (a synchronous waiter's fast answer)."""
        out = self.jobs.get(job_id)
        if out is not None:
            raise type(out.cause)(f"job {job_id} failed: {out.error}; and {out.cause}")

    def flush(self, fail: Callable[[str, str], JobRecord]) -> list[JobRecord]:
        """Write what the store now takes with ``fail(job_id, error)``; stop at the first refusal.

        The stored error keeps the store's own reason (a full disk, say): the record outlives the logs.
        """
        written: list[JobRecord] = []
        for job_id, out in list(self.jobs.items()):
            try:
                written.append(fail(job_id, f"{out.error} ({out.cause})"))
            except NotFound:
                pass  # expired or removed meanwhile: nothing left to record
            except StoreUnavailable:
                break
            del self.jobs[job_id]
        return written
