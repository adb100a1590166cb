"""watchdog.startup_timeout_s against a real agent: a worker or an overlap successor stuck in set-up is killed
and replaced (the fault engine's ``hang_in_setup``), and a job killed for passing its timeout fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_support import ADMIN, ALICE, Agent, auth, events, status, wait_for  # noqa: E402

pytestmark = pytest.mark.slow

DEADLINE = ["watchdog.startup_timeout_s=3", "watchdog.restart_backoff_s=0.1", "watchdog.restart_backoff_max_s=0.5"]


def _faults(**faults: object) -> dict[str, object]:
    return {"engine": {"kind": "faulty", "faults": {"inner": "synthetic", "job_seconds": 0.05, **faults}}}


def test_a_worker_stuck_in_setup_is_killed_and_replaced(tmp_path: Path) -> None:
    agent = Agent(tmp_path, sets=DEADLINE, extra=_faults(hang_in_setup=0))
    try:
        agent.wait_ready(120)  # only a replacement can get here: incarnation 0 never finishes set-up
        (kill,) = events(agent, "kill")
        assert "worker still setting up after" in kill["reason"]
        assert "watchdog.startup_timeout_s 3s" in kill["reason"] and kill["incarnation"] == 0
        ready = wait_for(lambda: events(agent, "ready"), 30, "the replacement's ready event", agent)
        assert ready[-1]["incarnation"] == 1 and "setting up" in ready[-1]["reason"]
        r = agent.client.post("/v1/jobs", json={"prompt": "after the stuck setup"}, headers=auth(ALICE))
        assert agent.wait_job(r.json()["id"], ALICE)["status"] == "succeeded"
    finally:
        agent.stop()


def test_a_stuck_overlap_successor_is_killed_and_the_slot_recycles_plainly(tmp_path: Path) -> None:
    # Every job recycles (overlapped: a second copy always fits on the CPU); successor incarnation 1 hangs.
    agent = Agent(tmp_path, sets=[*DEADLINE, "watchdog.recycle_after_jobs=1"], extra=_faults(hang_in_setup=1))
    try:
        agent.wait_ready()
        r = agent.client.post("/v1/jobs", json={"prompt": "one"}, headers=auth(ALICE))
        assert agent.wait_job(r.json()["id"], ALICE)["status"] == "succeeded"
        failed = wait_for(lambda: events(agent, "successor_failed"), 60, "the stuck successor's failure", agent)
        assert "successor still setting up after" in failed[0]["reason"]
        (kill,) = [e for e in events(agent, "kill") if e["incarnation"] == 1]
        assert "watchdog.startup_timeout_s" in kill["reason"]
        # The stuck successor no longer blocks the slot: the plain recycle brings incarnation 2 up.
        wait_for(lambda: [e for e in events(agent, "ready") if e["incarnation"] == 2], 60,
                 "incarnation 2 ready after the plain recycle", agent)
        r = agent.client.post("/v1/jobs", json={"prompt": "two"}, headers=auth(ALICE))
        assert agent.wait_job(r.json()["id"], ALICE)["status"] == "succeeded"
    finally:
        agent.stop()


def test_a_job_killed_for_passing_its_timeout_fails_and_is_not_requeued(tmp_path: Path) -> None:
    agent = Agent(tmp_path, sets=[*DEADLINE, "queue.job_timeout_s=2"], extra=_faults(hang_on_job=1))
    try:
        agent.wait_ready()
        r = agent.client.post("/v1/jobs", json={"prompt": "hangs"}, headers=auth(ALICE))
        job = agent.wait_job(r.json()["id"], ALICE, timeout_s=60)
        assert job["status"] == "failed" and job["attempts"] == 1
        assert "killed for passing its timeout, not retried" in job["error"]
        records = wait_for(lambda: [f for f in agent.client.get("/v1/failures", headers=auth(ADMIN)).json()["failures"]
                                    if f.get("job_id") == job["id"]], 10, "the failure record", agent)
        assert records[0]["action"] == "fail" and "past its 2s timeout" in records[0]["message"]
        wait_for(lambda: status(agent)["ready"], 60, "the replacement worker", agent)
    finally:
        agent.stop()
