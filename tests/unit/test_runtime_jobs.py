"""The SQLite job store: lifecycle, durability after a crash, cancel rules, retention."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from zitops.agent.contract import JobStatus
from zitops.agent.storage.jobs import DB_NAME, JobStore
from zitops.engine.request import GenerationRequest
from zitops.errors import Conflict, NotFound


def _req(prompt: str = "a fox", seed: int = 1) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, seeds=(seed, seed + 1), width=64, height=64, steps=2)


def test_lifecycle_and_attempts(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    rec = store.add(_req())
    assert rec.status is JobStatus.QUEUED and rec.attempts == 0
    assert rec.request == _req()
    rec = store.start(rec.id, "w0")
    assert (rec.status, rec.attempts, rec.worker) == (JobStatus.RUNNING, 1, "w0")
    rec = store.requeue(rec.id, "requeued after: worker died")
    assert rec.status is JobStatus.QUEUED and rec.attempts == 1 and rec.worker is None
    rec = store.start(rec.id, "w0")
    rec = store.succeed(rec.id, (f"{rec.id}-0.png", f"{rec.id}-1.png"), {"seconds": 0.1})
    assert rec.status is JobStatus.SUCCEEDED and rec.attempts == 2 and rec.error is None
    assert rec.images == (f"{rec.id}-0.png", f"{rec.id}-1.png")
    assert rec.public()["images"] == [f"/v1/jobs/{rec.id}/images/0", f"/v1/jobs/{rec.id}/images/1"]
    with pytest.raises(NotFound, match="no such job"):
        store.get("nope")


def test_cancel_only_queued(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    a, b = store.add(_req()), store.add(_req())
    assert store.cancel(a.id).status is JobStatus.CANCELLED
    store.start(b.id, "w0")
    with pytest.raises(Conflict, match="is running; only queued jobs can be cancelled"):
        store.cancel(b.id)
    with pytest.raises(Conflict, match="is cancelled"):
        store.cancel(a.id)


def test_recover_after_crash_requeues_running_in_creation_order(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    ids = [store.add(_req(seed=i)).id for i in range(4)]
    store.start(ids[1], "w0")  # running when the agent "died"
    store.fail(ids[3], "EngineError: boom")
    # No close(): a kill -9 does not close anything either.
    again = JobStore(tmp_path)
    assert again.recover() == [ids[0], ids[1], ids[2]]
    rec = again.get(ids[1])
    assert rec.status is JobStatus.QUEUED and rec.attempts == 1 and "agent stopped" in (rec.error or "")
    assert again.get(ids[3]).status is JobStatus.FAILED
    mode = sqlite3.connect(tmp_path / DB_NAME).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_expire_removes_only_old_final_jobs(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    done = store.add(_req())
    store.start(done.id, "w0")
    store.succeed(done.id, ("x.png",), {})
    waiting = store.add(_req())
    assert store.expire(60) == []
    removed = store.expire(-1)
    assert [r.id for r in removed] == [done.id] and removed[0].images == ("x.png",)
    with pytest.raises(NotFound):
        store.get(done.id)
    assert store.get(waiting.id).status is JobStatus.QUEUED
    assert store.count(JobStatus.QUEUED) == 1
