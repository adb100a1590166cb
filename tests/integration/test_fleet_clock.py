"""An agent whose wall clock is wrong or steps (issue 24, audit findings 6 and 7), on real PostgreSQL.

The agent runs with tests/clock_support.py's shim: its ``CLOCK_REALTIME`` is
off by an offset the test sets, its monotonic clock and the database's clock
are true. Both tests failed on the code before their fix.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.clock_support import WallClock
from tests.fleet_support import FleetAgent
from tests.store_support import poll_until

if TYPE_CHECKING:
    from tests.pg_support import PgDatabase

pytest_plugins = ["tests.pg_support"]  # the pg_cluster and pg_db fixtures
pytestmark = pytest.mark.slow


def _heartbeat_at(db: PgDatabase, agent_id: str) -> datetime | None:
    with db.connect() as conn:
        row = conn.execute("SELECT heartbeat_at FROM zitops.agents WHERE agent_id = %s", (agent_id,)).fetchone()
    return row[0] if row else None


def _server_now(db: PgDatabase) -> datetime:
    with db.connect() as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]


def test_finding6_a_backward_wall_clock_step_does_not_stop_the_rounds(tmp_path: Path, pg_db: PgDatabase) -> None:
    # The heartbeat round (every lease/3 = 1 s) is seen from the database: heartbeat_at is the
    # server's now(). With APScheduler's wall-clock triggers a 10-minute step back stopped it
    # (and every other round) for 10 minutes.
    wall = WallClock(tmp_path)
    a = FleetAgent(tmp_path / "a", pg_db, lease_s=3, env=wall.env)
    try:
        a.wait_ready()
        poll_until(lambda: _heartbeat_at(pg_db, a.agent_id), 30)
        wall.set(-600.0)
        stepped = _server_now(pg_db)
        # Three heartbeats after the step (one could already have been on its way).
        later = stepped + timedelta(seconds=3)
        poll_until(lambda: (_heartbeat_at(pg_db, a.agent_id) or stepped) > later, 30)
        job = a.submit(seed=1)  # and the agent still works: claims, runs, records
        poll_until(lambda: a.job(job)["status"] == "succeeded", 30)
    finally:
        a.stop()


def test_finding7_retention_uses_the_database_clock_not_the_agent_clock(tmp_path: Path, pg_db: PgDatabase) -> None:
    # An agent 10 minutes ahead with a 30 s retention: its cutoff (its clock - 30 s) lay
    # after every job's finished_at (the server's clock), so it deleted a job just finished.
    wall = WallClock(tmp_path, offset_s=600.0)
    a = FleetAgent(tmp_path / "a", pg_db, env=wall.env, sets=("queue.result_ttl_s=30",))
    try:
        a.wait_ready()
        fresh = a.submit(seed=1)
        poll_until(lambda: a.job(fresh)["status"] == "succeeded", 30)
        old = a.submit(seed=2)
        poll_until(lambda: a.job(old)["status"] == "succeeded", 30)
        with pg_db.connect() as conn:  # finished an hour ago by the database's clock: due for removal
            conn.execute("UPDATE zitops.jobs SET finished_at = now() - interval '1 hour' WHERE id = %s", (old,))
        # The retention round (every 3 s) removed the old job: it ran after the fresh one finished.
        poll_until(lambda: a.client.get(f"/v1/jobs/{old}").status_code == 404, 30)
        assert a.job(fresh)["status"] == "succeeded"
    finally:
        a.stop()

