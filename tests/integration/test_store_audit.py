"""Audit findings of issue 24 at the store, on real PostgreSQL: each test failed on the code before its fix.

Two stores on one database stand for two agents (as in test_store_pg.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.store_support import poll_until
from zitops.agent.contract import JobStatus
from zitops.agent.storage.store_pg import PgJobStore
from zitops.engine.request import GenerationRequest
from zitops.errors import Conflict

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


def test_finding1_a_running_row_the_agent_does_not_hold_is_not_renewed_and_gets_reaped(agents: Any) -> None:
    # A claim whose reply was lost: the row runs under agent a, which never learnt it.
    a, b = agents("a", lease_s=2), agents("b", lease_s=2)
    lost, kept = a.add(_req(1)), a.add(_req(2))
    a.claim("a", "w0", limit=2)

    def renew_then_reap() -> list[Any]:
        assert a.heartbeat("a", held=[kept.id]) == [kept.id]
        return list(b.reap_expired())

    reaped = poll_until(renew_then_reap, 10)
    assert [r.id for r in reaped] == [lost.id]
    assert a.get(lost.id).status is JobStatus.QUEUED  # the reaper put it back: someone runs it
    assert a.get(kept.id).status is JobStatus.RUNNING  # the one a holds stays a's


def test_finding3_recover_respects_max_attempts(agents: Any) -> None:
    # A job that kills its agent, which comes back under the same id each time.
    a = agents("a", max_attempts=2)
    job = a.add(_req())
    assert a.claim("a", "w0")[0].attempts == 1
    assert a.recover() == [job.id]
    assert a.claim("a", "w0")[0].attempts == 2
    assert a.recover() == []
    record = a.get(job.id)
    assert (record.status, record.attempts) == (JobStatus.FAILED, 2)
    assert record.error == "agent a stopped while running this job, attempt 2 of 2: failed at its restart"
    assert a.claim("a", "w0") == []


def test_finding5_a_replayed_requeue_of_an_old_attempt_changes_nothing(agents: Any) -> None:
    # The requeue committed but its reply was lost; the outbox replays it after the
    # agent claimed the job again (attempt 2). The replay must not requeue attempt 2.
    a = agents("a")
    job = a.add(_req())
    [first] = a.claim("a", "w0")
    a.requeue(job.id, "worker died", attempt=first.attempts)  # the write whose reply was lost
    [second] = a.claim("a", "w0")
    with pytest.raises(Conflict, match=r"running on agent a \(attempt 2\).*holds attempt 1"):
        a.requeue(job.id, "worker died", attempt=first.attempts)  # the outbox's replay
    assert (a.get(job.id).status, a.get(job.id).attempts) == (JobStatus.RUNNING, second.attempts)
