"""The fence by attempt, at the store: a stale agent changes nothing of a job it no longer holds.

Two stores on one real PostgreSQL database stand for two agents. Agent a
claims a job, its lease expires, agent b reaps it and runs attempt 2. Every
write a makes afterwards with the attempt it held (images, succeed, fail,
requeue, cancel) is refused by the statement itself, and readers only ever
see the images of the attempt that succeeded, from its succeed on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.store_support import poll_until
from zitops.agent.contract import JobStatus
from zitops.agent.storage.store_pg import PgJobStore
from zitops.engine.request import GenerationRequest
from zitops.errors import Conflict, NotFound

if TYPE_CHECKING:
    from tests.pg_support import PgDatabase

pytest_plugins = ["tests.pg_support"]  # the pg_cluster and pg_db fixtures


def _req(seed: int = 1) -> GenerationRequest:
    return GenerationRequest(prompt=f"job {seed}", seeds=(seed,), width=64, height=64, steps=2)


@pytest.fixture
def agents(pg_db: PgDatabase) -> Iterator[Any]:
    """``agents(name, **kw)`` opens a store as agent ``name``; all are closed afterwards."""
    opened: list[PgJobStore] = []

    def open_agent(name: str, **kw: Any) -> PgJobStore:
        store = PgJobStore(pg_db.url, password_file=pg_db.password_file, agent_id=name, **kw)
        opened.append(store)
        return store

    yield open_agent
    for store in opened:
        store.close()


def _stored(pg_db: PgDatabase, job_id: str) -> list[tuple[int, int, bytes]]:
    with pg_db.connect() as conn:
        rows = conn.execute("SELECT attempt, idx, data FROM zitops.job_images WHERE job_id = %s ORDER BY 1, 2",
                            (job_id,)).fetchall()
    return [(int(r[0]), int(r[1]), bytes(r[2])) for r in rows]


def test_a_stale_attempt_writes_nothing_and_its_images_never_show(agents: Any, pg_db: PgDatabase) -> None:
    a, b = agents("a", lease_s=0.5), agents("b", lease_s=0.5)
    job = a.add(_req())
    [first] = a.claim("a", "w0")
    a.put_images(job.id, [("x.png", b"A-1")], attempt=first.attempts)
    with pytest.raises(NotFound, match="no stored image 0"):  # not published: nobody reads it
        b.get_image(job.id, 0)
    poll_until(b.reap_expired)  # a stalls past its lease
    [second] = b.claim("b", "w1")
    assert (second.attempts, first.attempts) == (2, 1)
    b.put_images(job.id, [("x.png", b"B-2")], attempt=second.attempts)
    # a wakes up: every write with the attempt it held is refused, before and after b's succeed.
    for late in (lambda: a.put_images(job.id, [("x.png", b"STALE-A")], attempt=1),
                 lambda: a.succeed(job.id, ("x.png",), {}, attempt=1),
                 lambda: a.fail(job.id, "late", attempt=1),
                 lambda: a.requeue(job.id, "late", attempt=1),
                 lambda: a.cancel(job.id, running=True, attempt=1)):
        with pytest.raises(Conflict, match=r"running on agent b \(attempt 2\).*holds attempt 1"):
            late()
    with pytest.raises(NotFound):  # b has not succeeded yet: still nothing to read
        a.get_image(job.id, 0)
    done = b.succeed(job.id, ("x.png",), {"by": "b"}, attempt=second.attempts)
    assert (done.status, done.attempts, done.info) == (JobStatus.SUCCEEDED, 2, {"by": "b"})
    assert a.get_image(job.id, 0) == ("x.png", b"B-2")
    for late in (lambda: a.put_images(job.id, [("x.png", b"STALE-A")], attempt=1),
                 lambda: a.succeed(job.id, ("x.png",), {"by": "a"}, attempt=1)):
        with pytest.raises(Conflict, match="is succeeded"):
            late()
    assert a.get_image(job.id, 0) == ("x.png", b"B-2")
    assert _stored(pg_db, job.id) == [(2, 0, b"B-2")]  # the stale attempt's rows went with b's succeed
    assert a.get(job.id).info == {"by": "b"}


def test_a_requeued_job_refuses_the_old_attempts_outcome(agents: Any, pg_db: PgDatabase) -> None:
    # The store used to accept any agent's outcome for a queued job: a stale
    # agent could finish a job after the reaper had put it back in the queue.
    a, b = agents("a", lease_s=0.5), agents("b", lease_s=0.5)
    job = a.add(_req())
    [first] = a.claim("a", "w0")
    [reaped] = poll_until(b.reap_expired)
    assert (reaped.status, reaped.attempts) == (JobStatus.QUEUED, 1)
    with pytest.raises(Conflict, match=r"is queued \(attempt 1\); this agent cannot store images of it"):
        a.put_images(job.id, [("x.png", b"STALE-A")], attempt=first.attempts)
    with pytest.raises(Conflict, match="is queued"):
        a.succeed(job.id, ("x.png",), {}, attempt=first.attempts)
    with pytest.raises(Conflict, match="is queued"):
        a.fail(job.id, "late", attempt=first.attempts)
    assert b.get(job.id).status is JobStatus.QUEUED
    [again] = b.claim("b", "w1")
    b.put_images(job.id, [("x.png", b"B-2")], attempt=again.attempts)
    b.succeed(job.id, ("x.png",), {}, attempt=again.attempts)
    assert b.get_image(job.id, 0) == ("x.png", b"B-2") and _stored(pg_db, job.id) == [(2, 0, b"B-2")]


def test_a_failed_job_shows_no_images(agents: Any, pg_db: PgDatabase) -> None:
    a = agents("a")
    job = a.add(_req())
    [held] = a.claim("a", "w0")
    a.put_images(job.id, [("x.png", b"half")], attempt=held.attempts)
    assert a.fail(job.id, "engine error", attempt=held.attempts).status is JobStatus.FAILED
    with pytest.raises(NotFound):
        a.get_image(job.id, 0)
    assert _stored(pg_db, job.id) == []
