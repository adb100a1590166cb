"""Workers and standby spares die with the agent (PR_SET_PDEATHSIG): kill -9 the agent, and none is left."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_support import ALICE, Agent, auth, status, wait_for  # noqa: E402

pytestmark = pytest.mark.slow

GONE_WITHIN_S = 10.0


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next((line.split()[1] for line in text.splitlines() if line.startswith("State:")), "")
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_kill_9_of_the_agent_takes_its_worker_and_spare_along(tmp_path: Path) -> None:
    agent = Agent(tmp_path, sets=["watchdog.standby_worker=true", "watchdog.standby_preload=false"])
    try:
        agent.wait_ready()
        r = agent.client.post("/v1/jobs", json={"prompt": "then a spare starts"}, headers=auth(ALICE))
        assert agent.wait_job(r.json()["id"], ALICE)["status"] == "succeeded"
        spares = wait_for(lambda: [s["pid"] for s in status(agent)["standby"]["spares"] if s["state"] == "idle"],
                          60, "the standby spare", agent)
        workers = [w["pid"] for w in status(agent)["workers"] if w["pid"]]
        pids = workers + spares
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        os.kill(agent.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        agent.proc.wait(10)
        while any(_alive(p) for p in pids) and time.monotonic() - killed < GONE_WITHIN_S:
            time.sleep(0.01)
        took = time.monotonic() - killed
        left = [p for p in pids if _alive(p)]
        print(f"\nkill -9 of the agent: its {len(pids)} children gone after {took:.3f}s")
        assert not left, f"still running {took:.1f}s after kill -9 of the agent: {left}"
    finally:
        agent.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_kill_9_of_the_agent_takes_a_worker_busy_in_a_hung_job(tmp_path: Path) -> None:
    # An idle worker leaves on its pipe's EOF anyway, and a hung one whose heartbeat thread still runs leaves
    # when that thread's write hits the broken pipe. A hang in native code that holds the GIL (a stuck CUDA
    # call) runs no Python at all: only the kernel's PR_SET_PDEATHSIG can end it. With the prctl off
    # (zitops/worker/lifeline.py) this worker lives on, and the test fails.
    agent = Agent(tmp_path, sets=["queue.job_timeout_s=300", "watchdog.heartbeat_timeout_s=300"],
                  extra={"engine": {"kind": "faulty", "faults": {"inner": "synthetic", "hang_on_job": 1,
                                                                  "hang_holds_gil": True,
                                                                  "every_incarnation": True}}})
    busy: list[int] = []
    try:
        agent.wait_ready()
        job = agent.client.post("/v1/jobs", json={"prompt": "hangs"}, headers=auth(ALICE)).json()["id"]
        busy = wait_for(lambda: [w["pid"] for w in status(agent)["workers"] if w.get("current_job") == job
                                 and w["state"] == "busy"], 60, "the worker to be busy in the hung job", agent)
        os.kill(agent.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        agent.proc.wait(10)
        while any(_alive(p) for p in busy) and time.monotonic() - killed < GONE_WITHIN_S:
            time.sleep(0.01)
        left = [p for p in busy if _alive(p)]
        assert not left, f"the hung worker still runs {time.monotonic() - killed:.1f}s after kill -9: {left}"
    finally:
        agent.stop()
        for pid in busy:  # a worker that outlived its agent (the failure above) is ours to end
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
