"""The fleet's history under a seeded fault schedule holds: nothing accepted lost, nothing done twice.

Three real agents (each in its own network namespace, real spawned workers,
the fault engine's synthetic pixels, a different look per agent) on real
PostgreSQL; 40 jobs and 4 faults, one of each kind: kill -9 of an agent,
pg_terminate_backend of every connection, kill -9 of PostgreSQL, a DROP
partition of one agent. tests/history_support.py records the calls and the
rows and checks them; benchmarks/fleet_history.py runs the long schedule.
``ZITOPS_HISTORY_SEED`` replays a seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.history_support import history_run

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("ZITOPS_HISTORY_SEED", "24"))


def test_a_seeded_fault_schedule_keeps_every_accepted_job_once(tmp_path: Path) -> None:
    with history_run(tmp_path, seed=SEED, jobs=40, faults=4, submit_every_s=0.25, job_seconds=0.6) as run:
        summary = run.run()
        run.dump(tmp_path / "history.json")
    print(summary)  # shown with -s
    assert not summary.violations, f"seed {SEED} (ZITOPS_HISTORY_SEED={SEED} replays it; record in " \
                                   f"{tmp_path / 'history.json'}): {summary.violations}"
    assert summary.accepted >= 20 and summary.succeeded >= summary.accepted // 2, f"seed {SEED}: {summary}"
    assert sum(summary.faults.values()) == 4, f"seed {SEED}: {summary}"
