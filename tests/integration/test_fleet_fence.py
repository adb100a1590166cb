"""The fence by attempt through the HTTP API: a stalled agent's late result changes nothing anyone reads.

Agent a runs a job and is stopped (SIGSTOP: a GC pause, a frozen VM) while
its worker finishes. Its lease expires; agent b reaps the job and runs
attempt 2. The two agents draw different synthetic pixels, so their images
differ byte for byte. When a resumes, its late images and succeed are refused
by the store, and every client, on either agent, reads b's image: a's own
file of the same name is never served.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.fleet_support import FleetAgent
from tests.store_support import poll_until

if TYPE_CHECKING:
    from tests.pg_support import PgDatabase

pytest_plugins = ["tests.pg_support"]  # the pg_cluster and pg_db fixtures
pytestmark = pytest.mark.slow


def test_a_stalled_agents_late_result_is_refused_and_never_served(tmp_path: Path, pg_db: PgDatabase) -> None:
    a = FleetAgent(tmp_path / "a", pg_db, job_seconds=2.0, lease_s=3, faults={"pixels": "noise"})
    b: FleetAgent | None = None
    try:
        a.wait_ready()
        job = a.submit(seed=7)
        poll_until(lambda: a.job(job)["status"] == "running", 30)
        os.kill(a.proc.pid, signal.SIGSTOP)  # the agent only: its worker finishes the job meanwhile
        try:
            b = FleetAgent(tmp_path / "b", pg_db, job_seconds=0.05, lease_s=3)  # started now: a claimed first
            b.wait_ready()
            done = poll_until(lambda: b.job(job)["status"] == "succeeded" and b.job(job), 60)
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        assert done["attempts"] == 2, done
        image = f"/v1/jobs/{job}/images/0"
        theirs = b.client.get(image).content
        poll_until(lambda: a.log_lines("job succeed dropped: its lease moved on"), 60)
        name = f"{job}-0.png"
        stale = (a.tmp / "output_dir" / name).read_bytes()  # a's own run, written after b's succeed
        assert stale != theirs  # different pixels: the checks below can tell the runs apart
        for agent in (a, b):
            record = agent.job(job)
            assert (record["status"], record["attempts"]) == ("succeeded", 2), record
            assert agent.client.get(image).content == theirs, agent.agent_id
        with pg_db.connect() as conn:
            rows = conn.execute("SELECT attempt, idx FROM zitops.job_images WHERE job_id = %s", (job,)).fetchall()
            shown = conn.execute("SELECT image_attempt FROM zitops.jobs WHERE id = %s", (job,)).fetchone()
        assert rows == [(2, 0)] and shown == (2,), (rows, shown)
    finally:
        a.stop()
        if b is not None:
            b.stop()
