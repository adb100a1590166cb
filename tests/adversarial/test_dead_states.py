"""No silent dead state: the flap limit makes the agent exit for its supervisor; a permanent setup error
(ModelError) stops the slot at once, says why in /readyz and ``zitops status``, and never crash-loops."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_support import ADMIN, ALICE, CLI, Agent, auth, events, status, wait_for  # noqa: E402

from zitops.agent.server import RESTART_EXIT  # noqa: E402

pytestmark = pytest.mark.slow


def test_flap_limit_exits_nonzero_for_the_supervisor_and_keeps_the_job(tmp_path: Path) -> None:
    agent = Agent(tmp_path, sets=["watchdog.flap_limit=2", "watchdog.restart_backoff_s=0.1",
                                  "watchdog.restart_backoff_max_s=0.5"],
                  extra={"engine": {"kind": "faulty", "faults": {"inner": "synthetic", "crash_on_job": 1,
                                                                 "every_incarnation": True}}})
    try:
        agent.wait_ready()
        r = agent.client.post("/v1/jobs", json={"prompt": "crashes every worker"}, headers=auth(ALICE))
        assert r.status_code == 202
        job_id = r.json()["id"]
        # Two deaths in the window: the only slot stops, nothing could ever run a job, so the agent exits.
        assert agent.proc.wait(90) == RESTART_EXIT
        out = agent.output()
        assert "flap limit 2" in out and "exiting for the supervisor to restart the agent" in out
        db = sqlite3.connect(agent.tmp / "run" / "state_dir" / "jobs.sqlite3")
        try:
            (row,) = db.execute("SELECT status, attempts, error FROM jobs WHERE id = ?", (job_id,)).fetchall()
        finally:
            db.close()
        assert row[0] == "failed" and row[1] == 2 and "crashed twice" in row[2]  # recorded, not lost
    finally:
        agent.stop()


def test_a_missing_model_stops_the_slot_at_once_with_the_reason(tmp_path: Path) -> None:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    agent = Agent(tmp_path, sets=["watchdog.restart_backoff_s=0.1", "watchdog.restart_backoff_max_s=0.5"],
                  extra={"engine": {"kind": "diffusers"}, "model": str(empty)})
    try:
        def stopped() -> list[str]:
            r = agent.client.get("/readyz", headers=auth(ADMIN))
            return [x for x in r.json()["reasons"] if "ModelError" in x] if r.status_code == 503 else []

        (reason,) = wait_for(stopped, 120, "/readyz to name the ModelError", agent)
        assert "engine setup failed" in reason and "not retried" in reason and str(empty) in reason
        assert agent.client.get("/readyz").json()["reasons"] == ["setup_failed", "no_worker_ready"]
        st = status(agent)
        (w,) = st["workers"]
        assert w["state"] == "error" and w["incarnation"] == 0
        assert not events(agent, "restart") and not events(agent, "flap_limit")
        assert [e["kind"] for e in st["recoveries"]] == ["setup_error"]
        assert agent.client.get("/livez").status_code == 200 and agent.proc.poll() is None  # no crash loop
        r = agent.client.post("/v1/jobs", json={"prompt": "x"}, headers=auth(ALICE))
        assert r.status_code == 503 and "ModelError" in r.json()["error"]["message"]
        token = tmp_path / "admin.token"
        token.write_text(ADMIN)
        token.chmod(0o600)
        shown = subprocess.run([sys.executable, "-c", CLI, "status", "--url", agent.url, "--token-file", str(token)],
                               capture_output=True, text=True, timeout=60)
        assert "ready     no" in shown.stdout and "ModelError" in shown.stdout and "error" in shown.stdout
    finally:
        agent.stop()
