"""The fleet side of the PostgreSQL job store, against a real throwaway server.

Two stores on one database stand for two agents on two hosts: each has its
own pool of connections and its own agent id.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.store_support import Notices, init_store_at_barrier, poll_until
from zitops.agent.contract import JobStatus
from zitops.agent.storage.pg_schema import migrate, migrations
from zitops.agent.storage.store_pg import PgJobStore
from zitops.engine.request import GenerationRequest
from zitops.errors import Conflict, NotFound, StoreUnavailable

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


def test_skip_locked_claim_passes_over_rows_another_agent_holds(agents: Any, pg_db: PgDatabase) -> None:
    a, b = agents("a"), agents("b")
    ids = [a.add(_req(i)).id for i in range(6)]
    with pg_db.connect() as other:  # agent a mid-claim: the three oldest rows are locked
        other.execute("BEGIN")
        other.execute("SELECT id FROM zitops.jobs WHERE id = ANY(%s) FOR UPDATE", (ids[:3],))
        got = b.claim("b", "w0", limit=2)
        other.execute("ROLLBACK")
    assert [r.id for r in got] == ids[3:5]
    assert all(r.status is JobStatus.RUNNING and r.attempts == 1 and r.worker == "w0" for r in got)
    assert [r.id for r in a.claim("a", "w0", limit=10)] == ids[:3] + ids[5:]
    assert a.claim("a", "w0") == []


def test_two_agents_claiming_at_once_get_each_job_exactly_once(agents: Any) -> None:
    a, b = agents("a"), agents("b")
    ids = {a.add(_req(i)).id for i in range(60)}
    got: dict[str, list[str]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def run(store: PgJobStore) -> None:
        start.wait(10)
        while batch := store.claim(store.agent_id, "w0", limit=2):
            for rec in batch:
                got[store.agent_id].append(rec.id)
                store.succeed(rec.id, (), {})

    threads = [threading.Thread(target=run, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got["a"] + got["b"]) == sorted(ids)  # every job, none twice
    assert not set(got["a"]) & set(got["b"])
    assert {(a.get(i).status, a.get(i).attempts) for i in ids} == {(JobStatus.SUCCEEDED, 1)}


def test_heartbeat_renews_the_agents_leases(agents: Any, pg_db: PgDatabase) -> None:
    a = agents("a", lease_s=30)
    job = a.add(_req())
    a.claim("a", "w0")

    def lease() -> Any:
        with pg_db.connect() as conn:
            row = conn.execute("SELECT lease_until FROM zitops.jobs WHERE id = %s", (job.id,)).fetchone()
        assert row is not None
        return row[0]

    before = lease()
    assert poll_until(lambda: a.heartbeat("a") and lease() > before) is True
    assert a.heartbeat("someone-else") == []


def test_expired_lease_is_reaped_and_claimed_by_another_agent(agents: Any) -> None:
    a, b = agents("a", lease_s=0.5), agents("b", lease_s=0.5)
    job = a.add(_req())
    assert [r.id for r in a.claim("a", "w0")] == [job.id]
    # Agent a "dies": no more heartbeats. Agent b's reaper finds the expired lease.
    reaped = poll_until(b.reap_expired)
    assert [r.id for r in reaped] == [job.id]
    assert (reaped[0].status, reaped[0].attempts, reaped[0].worker) == (JobStatus.QUEUED, 1, None)
    assert "lease of agent a expired (attempt 1 of 2); requeued by agent b" in (reaped[0].error or "")
    [again] = b.claim("b", "w1")
    assert (again.id, again.attempts) == (job.id, 2)
    with pytest.raises(Conflict, match="running on agent b"):
        a.succeed(job.id, ("late.png",), {})  # a's late result cannot overwrite b's run
    assert b.succeed(job.id, ("x.png",), {}).status is JobStatus.SUCCEEDED
    with pytest.raises(Conflict, match="is succeeded"):
        a.fail(job.id, "late")


def test_a_job_whose_agent_is_lost_twice_fails_with_a_record(agents: Any) -> None:
    a, b = agents("a", lease_s=0.3), agents("b", lease_s=0.3)
    job = a.add(_req())
    a.claim("a", "w0")
    poll_until(b.reap_expired)
    assert b.claim("b", "w0")[0].attempts == 2
    reaped = poll_until(a.reap_expired)  # b "dies" too
    rec = reaped[0]
    assert (rec.id, rec.status, rec.attempts) == (job.id, JobStatus.FAILED, 2)
    assert rec.finished_at is not None
    assert rec.error == ("agent lost twice while running this job: lease of agent b expired "
                         "(attempt 2 of 2); failed by agent a")
    assert a.claim("a", "w0") == []


def test_recover_takes_back_only_this_agents_jobs(agents: Any) -> None:
    a, b = agents("a"), agents("b")
    ja, jb = a.add(_req(1)), a.add(_req(2))
    a.claim("a", "w0")
    b.claim("b", "w0")
    restarted = agents("a")
    assert restarted.recover() == [ja.id]
    assert "agent a" in (restarted.get(ja.id).error or "")
    assert restarted.get(jb.id).status is JobStatus.RUNNING


def test_fleet_counts_for_back_pressure(agents: Any) -> None:
    a, b = agents("a"), agents("b")
    for i in range(3):
        a.add(_req(i))
    a.claim("a", "w0")
    a.heartbeat("a", ready=True)
    b.heartbeat("b", ready=False)
    counts = b.fleet_counts()
    assert (counts.queued, counts.running, counts.ready_agents, counts.image_bytes) == (2, 1, 1, 0)


def test_notify_wakes_a_listener_on_another_agent(agents: Any) -> None:
    a, b = agents("a"), agents("b")
    notices = Notices(b.listener())
    try:
        notices.next("resync")  # listening from here on
        job = a.add(_req())
        assert notices.next("queued").job_id == job.id
        a.claim("a", "w0")
        a.succeed(job.id, (), {})
        done = notices.next("done")
        assert (done.job_id, done.status) == (job.id, "succeeded")
    finally:
        notices.stop()


def test_images_round_trip_byte_exact_through_another_agent(agents: Any) -> None:
    a, b = agents("a"), agents("b")
    job = a.add(_req())
    [held] = a.claim("a", "w0")
    big, small = os.urandom(3_000_000), bytes(range(256)) * 3
    names = (f"{job.id}-0.png", f"{job.id}-1.png")
    assert a.put_images(job.id, list(zip(names, (big, small), strict=True)), attempt=held.attempts) \
        == len(big) + len(small)
    # The same attempt stored again (a retried upload) replaces its own rows.
    assert a.put_images(job.id, list(zip(names, (big, small), strict=True)), attempt=held.attempts) \
        == len(big) + len(small)
    a.succeed(job.id, names, {}, attempt=held.attempts)
    assert b.get_image(job.id, 0) == (f"{job.id}-0.png", big)
    assert b.get_image(job.id, 1) == (f"{job.id}-1.png", small)
    with pytest.raises(NotFound, match="no stored image 2"):
        b.get_image(job.id, 2)
    with pytest.raises(NotFound, match="no such job"):
        a.put_images("nope", [("x.png", b"x")])
    assert b.fleet_counts().image_bytes == len(big) + len(small)


def test_retention_by_bytes_drops_oldest_final_jobs(agents: Any) -> None:
    a = agents("a")
    done = []
    for i in range(4):
        job = a.add(_req(i))
        a.claim("a", "w0")
        a.put_images(job.id, [(f"{job.id}-0.png", bytes([i]) * 1000)])
        a.succeed(job.id, (f"{job.id}-0.png",), {})
        done.append(job.id)
    waiting = a.add(_req(9))
    a.put_images(waiting.id, [("partial.png", b"p" * 5000)])  # not final: never trimmed, not counted
    removed = a.expire_bytes(2500)
    assert sorted(r.id for r in removed) == sorted(done[:2])
    with pytest.raises(NotFound):
        a.get_image(done[0], 0)
    assert a.get_image(done[2], 0)[1] == bytes([2]) * 1000
    assert a.get(waiting.id).status is JobStatus.QUEUED
    assert a.fleet_counts().image_bytes == 2000  # published images only
    assert a.expire_bytes(2000) == []


def test_two_agents_initialising_an_empty_database_at_once(pg_db: PgDatabase) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=init_store_at_barrier,
                         args=(barrier, pg_db.url, str(pg_db.password_file), name, results))
             for name in ("a", "b", "c")]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert outcome == {"a": "ok", "b": "ok", "c": "ok"}
    with pg_db.connect() as conn:
        versions = conn.execute("SELECT version FROM zitops.schema_version ORDER BY version").fetchall()
        assert versions == [(m.version,) for m in migrations()]  # each applied exactly once
        assert conn.execute("SELECT count(*) FROM zitops.jobs").fetchone() == (3,)


def test_schema_newer_than_this_zitops_is_refused(agents: Any, pg_db: PgDatabase) -> None:
    agents("a")
    with pg_db.connect() as conn:
        assert migrate(conn) == []  # already current: nothing to apply
        conn.execute("INSERT INTO zitops.schema_version (version, name) VALUES (99, 'future')")
    with pytest.raises(StoreUnavailable, match="schema is at version 99.*upgrade zitops"):
        agents("b")


def test_store_down_and_up_loses_nothing(agents: Any, pg_cluster: PgCluster) -> None:
    store = agents("a", timeout_s=1, probe_interval_s=0.2)
    notices = Notices(store.listener(retry_s=0.2))
    try:
        notices.next("resync")
        ids = [store.add(_req(i)).id for i in range(3)]
        [running] = store.claim("a", "w0")
        pg_cluster.stop()
        try:
            with pytest.raises(StoreUnavailable) as down:
                store.get(ids[1])
            message = str(down.value)
            assert message.startswith(f"job store {store.connector.display} unavailable: ")
            assert "\n" not in message
            assert pg_cluster.password_file.read_text().strip() not in message
            with pytest.raises(StoreUnavailable):
                store.add(_req(7))  # refused at once while down: not accepted, so not lost
            assert store.available() == (False, message)
        finally:
            pg_cluster.start()
        poll_until(lambda: store.available()[0], timeout_s=30)
        notices.next("resync")  # the listener reconnected by itself
        assert [store.get(i).status for i in ids] == [JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.QUEUED]
        assert running.id == ids[0]
        assert store.succeed(running.id, (), {}).status is JobStatus.SUCCEEDED  # the lease is still ours
        new = store.add(_req(8))
        assert notices.next("queued").job_id == new.id
    finally:
        notices.stop()


def test_password_file_missing_is_one_clear_line(pg_db: PgDatabase, tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match=r"store password file .*/absent: cannot read it"):
        PgJobStore(pg_db.url, password_file=tmp_path / "absent", timeout_s=1)
