"""This agent's waiting jobs in the order they run: highest priority first, FIFO within a level.

Priorities are 0 (low), 1 (normal) and 2 (high), carried in the stored
request (``request.extra["priority"]``), so a restart restores the same
order. Each job may also carry a deadline (``max_queue_s`` after it was
accepted); :meth:`JobQueue.overdue` lists the jobs past theirs. Plain data:
the dispatcher owns the queue and the store; this only keeps the order.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

from zitops.agent.contract import DEFAULT_PRIORITY, PRIORITIES, JobRecord, priority_of


def deadline_of(extra: dict[str, Any], created_at: float) -> float | None:
    """When a stored job stops being worth running (epoch seconds), or None without ``max_queue_s``."""
    value = extra.get("max_queue_s")
    return created_at + float(value) if isinstance(value, (int, float)) and value > 0 else None


class JobQueue:
    """Job ids by priority level; ``popleft`` takes the oldest of the highest level."""

    def __init__(self) -> None:
        self._levels: dict[int, collections.deque[str]] = {p: collections.deque() for p in PRIORITIES}
        self._priority: dict[str, int] = {}
        self._deadline: dict[str, float] = {}

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels.values())

    def __bool__(self) -> bool:
        return any(self._levels.values())

    def __iter__(self) -> Iterator[str]:
        for p in sorted(PRIORITIES, reverse=True):
            yield from self._levels[p]

    def append(self, job_id: str, priority: int = DEFAULT_PRIORITY, deadline: float | None = None) -> None:
        """Queue a job behind the others of its level."""
        self._remember(job_id, priority, deadline)
        self._levels[self._priority[job_id]].append(job_id)

    def appendleft(self, job_id: str, priority: int | None = None, deadline: float | None = None) -> None:
        """Put a job first in its level (a requeued job, or one a worker could not take)."""
        self._remember(job_id, priority if priority is not None else self._priority.get(job_id), deadline)
        self._levels[self._priority[job_id]].appendleft(job_id)

    def add(self, record: JobRecord) -> None:
        """Queue a stored job at its priority, with its deadline."""
        extra = record.request.extra
        self.append(record.id, priority_of(extra), deadline_of(extra, record.created_at))

    def restore(self, records: list[JobRecord]) -> None:
        """Queue the jobs a restart found waiting (oldest first)."""
        for record in records:
            self.add(record)

    def popleft(self) -> str:
        """The next job: the oldest of the highest level (IndexError when empty).

        Its priority and deadline are kept until the next :meth:`overdue`, so a
        job put back at once (``appendleft``) keeps both.
        """
        for p in sorted(PRIORITIES, reverse=True):
            if self._levels[p]:
                return self._levels[p].popleft()
        raise IndexError("pop from an empty job queue")

    def remove(self, job_id: str) -> None:
        """Take a job out (cancelled, or failed at its deadline); ValueError when it is not queued."""
        level = self._priority.get(job_id)
        if level is None or job_id not in self._levels[level]:
            raise ValueError(f"{job_id} is not queued")
        self._levels[level].remove(job_id)
        self._priority.pop(job_id, None)
        self._deadline.pop(job_id, None)

    def overdue(self, now: float) -> list[str]:
        """Queued jobs whose deadline has passed (what is kept of jobs no longer queued is dropped)."""
        queued = set(self)
        self._priority = {job_id: p for job_id, p in self._priority.items() if job_id in queued}
        self._deadline = {job_id: at for job_id, at in self._deadline.items() if job_id in queued}
        return [job_id for job_id, at in self._deadline.items() if at <= now]

    def take_overdue(self, now: float) -> list[str]:
        """Take out and return the queued jobs whose deadline has passed."""
        late = self.overdue(now)
        for job_id in late:
            self.remove(job_id)
        return late

    def depths(self) -> dict[int, int]:
        """Waiting jobs per priority level."""
        return {p: len(level) for p, level in self._levels.items()}

    def _remember(self, job_id: str, priority: int | None, deadline: float | None) -> None:
        self._priority[job_id] = priority if priority in PRIORITIES else DEFAULT_PRIORITY  # type: ignore[assignment]
        if deadline is not None:
            self._deadline[job_id] = deadline
