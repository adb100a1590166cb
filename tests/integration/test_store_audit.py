"""Audit findings of issue 24 at the store, on real PostgreSQL: each test failed on the code before its fix.

Two stores on one database stand for two agents (as in test_store_pg.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.store_support import poll_until
from zitops.agent.contract import JobStatus
from zitops.agent.ops.agent_log import AgentLog
from zitops.agent.storage.fleet_store import FleetStore
from zitops.agent.storage.store_errors import Unsaved
from zitops.agent.storage.store_pg import PgJobStore
from zitops.engine.request import GenerationRequest
from zitops.errors import Conflict, QueueFull, StoreUnavailable

if TYPE_CHECKING:
    from tests.pg_support import PgCluster, PgDatabase

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


def _db_down(pg_cluster: PgCluster, pg_db: PgDatabase, up: bool) -> None:
    """Refuse (or allow again) connections to the test's database, cutting the open ones: a store outage."""
    with pg_cluster.admin() as admin:
        admin.execute(f'ALTER DATABASE "{pg_db.name}" ALLOW_CONNECTIONS {str(up).lower()}')
        if not up:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (pg_db.name,))


def test_finding2_a_lost_lease_finishing_while_the_store_is_down_parks_nothing_and_outcomes_dedupe(
        agents: Any, pg_cluster: PgCluster, pg_db: PgDatabase, tmp_path: Path) -> None:
    # Agent a held two jobs. Its lease on `lost` lapsed and b requeued it; then the store went
    # down and both jobs finished. The dispatcher's loop retries an unsaved failure every tick
    # (Unsaved.flush with the store's fail), and each retry used to park another `fail` of the
    # lost job, until the outbox's bound pushed out other jobs' outcomes.
    a, b = agents("a", lease_s=1, probe_interval_s=0.2), agents("b", lease_s=1)
    fleet = FleetStore(a, tmp_path, AgentLog(), lambda record: None)
    lost_job, kept_job = a.add(_req(1)), a.add(_req(2))
    assert fleet.claim("w0") is not None and fleet.claim("w1") is not None

    def renew_kept_then_reap() -> list[str]:
        assert a.heartbeat("a", held=[kept_job.id]) == [kept_job.id]
        return [r.id for r in b.reap_expired()]

    assert poll_until(renew_kept_then_reap, 10) == [lost_job.id]
    assert fleet.lost([lost_job.id], a.heartbeat("a", held=[lost_job.id])) == [lost_job.id]

    _db_down(pg_cluster, pg_db, up=False)
    try:
        poll_until(lambda: _down(a), 10)
        fleet.requeue(kept_job.id, "worker died")  # a first decision, then a later one of the same attempt
        fleet.fail(kept_job.id, "engine failed")
        unsaved = Unsaved()
        with pytest.raises(StoreUnavailable):
            fleet.fail(lost_job.id, "engine failed")
        unsaved.fail(lost_job.id, "engine failed", StoreUnavailable("down"))
        for _ in range(20):  # the dispatcher's ticks while the store stays down
            unsaved.flush(fleet.fail)
        assert [(p.job_id, p.attempt, p.action) for p in fleet.outbox.values()] == [(kept_job.id, 1, "fail")]
    finally:
        _db_down(pg_cluster, pg_db, up=True)

    assert poll_until(lambda: asyncio.run(fleet.flush(_off_loop)), 20) == 1
    unsaved.flush(fleet.fail)
    assert not fleet.outbox and not unsaved.jobs
    kept, lost = a.get(kept_job.id), a.get(lost_job.id)
    assert (kept.status, kept.error, kept.attempts) == (JobStatus.FAILED, "engine failed", 1)
    assert (lost.status, lost.attempts) == (JobStatus.QUEUED, 1)  # b's requeue stands; a changed nothing


async def _off_loop(fn: Callable[..., object], *args: object) -> object:
    return await asyncio.to_thread(fn, *args)


def _down(store: PgJobStore) -> bool:
    try:
        store.count(JobStatus.QUEUED)
    except StoreUnavailable:
        return True
    return False


def test_the_per_token_cap_holds_under_concurrent_submits(agents: Any) -> None:
    # Four agents, sixteen submitters of one token released together, rounds against a cap of 2.
    # Under READ COMMITTED each insert counted the token's waiting jobs without the others' rows.
    stores = [agents(name, pool_size=4) for name in "abcd"]
    gate = threading.Barrier(16)

    def submit(i: int) -> bool:
        gate.wait(10)
        try:
            stores[i % 4].add(_req(i), owner=f"tenant{i // 16}", owner_cap=2)
        except QueueFull:
            return False
        return True

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        accepted = [sum(pool.map(submit, range(r * 16, r * 16 + 16))) for r in range(ROUNDS)]
    assert accepted == [2] * ROUNDS and stores[0].count(JobStatus.QUEUED) == 2 * ROUNDS


ROUNDS = 5
