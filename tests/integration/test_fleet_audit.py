"""Audit findings of issue 24 with real agents on real PostgreSQL: each test failed on the code before its fix."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.fleet_support import FleetAgent
from tests.store_support import poll_until

if TYPE_CHECKING:
    from tests.pg_support import PgCluster, PgDatabase

pytest_plugins = ["tests.pg_support"]  # the pg_cluster and pg_db fixtures
pytestmark = pytest.mark.slow


def final(agent: FleetAgent, job_id: str) -> dict[str, Any] | None:
    """The job's record once it is final, else None (for poll_until)."""
    record = agent.job(job_id)
    return record if record["status"] in ("succeeded", "failed", "cancelled") else None


def test_finding4_after_an_outage_without_a_restart_owners_renew_before_anyone_reaps(
        tmp_path: Path, pg_cluster: PgCluster, pg_db: PgDatabase) -> None:
    # An outage longer than the lease with no PostgreSQL restart (a network cut, a PgBouncer
    # restart): the postmaster-start guard does not apply, and the reaper used to run before
    # the owner's heartbeat and requeue its live job. The heartbeat runs every lease/3 (2 s),
    # the reaper every second, so the reaper came first.
    a = FleetAgent(tmp_path / "a", pg_db, job_seconds=14.0, lease_s=6)
    try:
        a.wait_ready()
        job = a.submit(seed=1)
        poll_until(lambda: a.job(job)["status"] == "running", 30)
        with pg_cluster.admin() as admin:
            admin.execute(f'ALTER DATABASE "{pg_db.name}" ALLOW_CONNECTIONS false')
            try:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                              (pg_db.name,))
                poll_until(lambda: not a.ready(), 30)
                time.sleep(8.0)  # the fault's length: past the 6 s lease (not an assertion)
            finally:
                admin.execute(f'ALTER DATABASE "{pg_db.name}" ALLOW_CONNECTIONS true')
        done = poll_until(lambda: final(a, job), 60)
        assert (done["status"], done["attempts"]) == ("succeeded", 1), done
        assert not a.log_lines("job requeued") and not a.log_lines("lease lost: the job was reaped while this "
                                                                   "agent ran it; its result will be dropped")
    finally:
        a.stop()


def test_finding8_a_worker_crash_requeue_in_a_fleet_does_not_fill_a_local_queue(
        tmp_path: Path, pg_db: PgDatabase) -> None:
    # The requeue went to the dispatcher's own queue, which nothing empties in fleet mode and
    # readiness counts: with queue.depth 1, one crash left the agent "queue full" for good.
    a = FleetAgent(tmp_path / "a", pg_db, sets=("queue.depth=1",), faults={"crash_on_job": 1})
    try:
        a.wait_ready()
        job = a.submit(seed=1)
        done = poll_until(lambda: final(a, job), 60)
        assert (done["status"], done["attempts"]) == ("succeeded", 2), done  # crashed once, then ran
        poll_until(a.ready, 30)
        after = a.submit(seed=2)
        poll_until(lambda: a.job(after)["status"] == "succeeded", 30)
    finally:
        a.stop()
