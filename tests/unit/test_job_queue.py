"""The queue's order: highest priority first, FIFO within a level; deadlines; restored order."""

from __future__ import annotations

import pytest

from zitops.agent.contract import JobRecord, JobStatus
from zitops.agent.dispatch.job_queue import JobQueue, deadline_of, priority_of
from zitops.engine.request import GenerationRequest


def _record(job_id: str, created_at: float, **extra: object) -> JobRecord:
    req = GenerationRequest(prompt="p", seeds=(1,), width=64, height=64, steps=2, extra=dict(extra))
    return JobRecord(id=job_id, status=JobStatus.QUEUED, request=req, created_at=created_at)


def test_highest_priority_first_fifo_within_a_level() -> None:
    q = JobQueue()
    for job_id, p in (("a", 0), ("b", 1), ("c", 2), ("d", 1), ("e", 2), ("f", 0)):
        q.append(job_id, p)
    assert list(q) == ["c", "e", "b", "d", "a", "f"]
    assert [q.popleft() for _ in range(len(q))] == ["c", "e", "b", "d", "a", "f"]
    with pytest.raises(IndexError):
        q.popleft()


def test_put_back_keeps_its_level_and_goes_first_in_it() -> None:
    q = JobQueue()
    q.append("low", 0)
    q.append("hi1", 2)
    q.append("hi2", 2)
    first = q.popleft()
    q.appendleft(first)  # a worker could not take it
    assert list(q) == ["hi1", "hi2", "low"]
    q.remove("hi2")
    assert list(q) == ["hi1", "low"] and q.depths() == {0: 1, 1: 0, 2: 1}
    with pytest.raises(ValueError):
        q.remove("hi2")


def test_deadlines_and_restore_from_records() -> None:
    q = JobQueue()
    q.restore([_record("old", 100.0, priority=0, max_queue_s=5), _record("new", 101.0, priority=2),
               _record("bad", 102.0, priority="x")])
    assert list(q) == ["new", "bad", "old"]  # a priority that is not 0..2 is the default, 1
    assert q.overdue(104.0) == [] and q.overdue(105.0) == ["old"]
    assert q.take_overdue(105.0) == ["old"] and list(q) == ["new", "bad"]
    assert q.overdue(1e9) == []
    assert priority_of({}) == 1 and deadline_of({"max_queue_s": 3}, 10.0) == 13.0 and deadline_of({}, 1.0) is None
