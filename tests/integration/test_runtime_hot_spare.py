"""Hot spares with real worker processes: a loaded, warm second worker takes the slot at once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.runtime_support import (
    REAL_ENGINE_SETS,
    Runtime,
    hung_job_pid,
    pid_alive,
    request,
    runtime_config,
    wait_until,
)
from zitops.agent.contract import JobStatus

pytestmark = pytest.mark.slow

# The first incarnation hangs on its first job, so the job is surely in flight at the kill; the spare
# (incarnation 1) runs the real tiny pipeline.
HANG = {"inner": "diffusers", "job_seconds": 0.0, "hang_on_job": 1}


def test_kill_9_of_the_busy_worker_hands_its_job_to_the_hot_spare(tmp_path: Path) -> None:
    rt = Runtime(runtime_config(tmp_path, faults=HANG, sets=REAL_ENGINE_SETS + ["watchdog.hot_spare=true"]))
    try:
        (ready,) = wait_until(lambda: rt.events("hot_spare_ready"), 60, what="the hot spare")
        spare = rt.status()["hot_spare"]["spares"][0]
        assert spare["pid"] == ready["spare_pid"] and spare["state"] == "ready" and spare["startup"]
        assert rt.status()["hot_spare"]["setting"] is True
        seen: list[tuple[str, list[str | None]]] = []  # each event, with the slots' jobs as it is recorded
        record = rt.d.on_event

        def on_event(event: dict[str, Any]) -> None:
            record(event)
            seen.append((event["kind"], [s.job_id for s in rt.d.pool.slots]))

        rt.lt.call(setattr, rt.d, "on_event", on_event)
        rec = rt.submit()
        old_pid = hung_job_pid(rt, rec.id)
        t_kill = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        done = rt.wait(rec.id)
        kill_to_done = time.monotonic() - t_kill
        assert done.status is JobStatus.SUCCEEDED and done.attempts == 2, done.error
        print(f"hot spare: kill -9 -> requeued job done in {kill_to_done:.3f} s")
        kinds = [e["kind"] for e in rt.events()]
        crash = kinds.index("crash")
        # Straight from the crash to the takeover: no restart, no cold spawn of the slot's worker.
        assert kinds[crash + 1] == "takeover", kinds
        assert "restart" not in kinds and "ready" not in kinds, kinds
        (takeover,) = rt.events("takeover")
        assert takeover["old_pid"] == old_pid and takeover["new_pid"] == ready["spare_pid"]
        # The slot's worker now is the former spare, and it ran the job.
        (w,) = [w for w in rt.status()["workers"] if w["id"] == "w0" and w["state"] in ("ready", "busy")]
        assert w["pid"] == ready["spare_pid"] and w["jobs_done"] == 1
        assert not pid_alive(old_pid)
        # A new spare is built in the background, and becomes ready.
        rebuilt = wait_until(lambda: rt.events("hot_spare_ready")[1:], 60, what="the rebuilt spare")[0]
        # It was started once the requeued job had finished, so its load did not slow that job.
        assert [jobs for kind, jobs in seen if kind == "hot_spare_start"] == [[None]]
        assert rebuilt["spare_pid"] not in (old_pid, ready["spare_pid"])
        assert rt.status()["hot_spare"]["spares"][0]["pid"] == rebuilt["spare_pid"]
        assert rt.ready()[0]
    finally:
        rt.close()


@pytest.mark.parametrize("setting", ["false", "auto"])
def test_no_hot_spare_when_off_or_auto_on_the_cpu(tmp_path: Path, setting: str) -> None:
    rt = Runtime(runtime_config(tmp_path, kind="faulty", sets=[f"watchdog.hot_spare={setting}"]))
    try:
        (pid,) = [w["pid"] for w in rt.status()["workers"]]
        os.kill(pid, signal.SIGKILL)
        # The pool decides on a spare in the callback that records a worker's "ready": past it, none was built.
        wait_until(lambda: rt.events("ready"), 30, what="the restarted worker")
        st = rt.status()
        assert st["hot_spare"]["spares"] == [] and st["hot_spare"]["setting"] == (setting == "auto" and "auto")
        assert not rt.events("hot_spare_start") and not rt.events("takeover")
        assert [w["state"] for w in st["workers"]] == ["ready"]
    finally:
        rt.close()


def test_a_policy_recycle_hands_the_slot_to_the_ready_spare(tmp_path: Path) -> None:
    rt = Runtime(runtime_config(tmp_path, kind="faulty",
                                sets=["watchdog.hot_spare=true", "watchdog.recycle_after_jobs=2"]))
    try:
        (ready,) = wait_until(lambda: rt.events("hot_spare_ready"), 30, what="the hot spare")
        (old_pid,) = [w["pid"] for w in rt.status()["workers"] if w["state"] == "ready"]
        for i in range(2):
            assert rt.wait(rt.submit(request(seed=i)).id).status is JobStatus.SUCCEEDED
        (handover,) = wait_until(lambda: rt.events("handover"), 30, what="the handover")
        assert handover["old_pid"] == old_pid and handover["new_pid"] == ready["spare_pid"]
        (recycle,) = rt.events("recycle")
        assert recycle["policy"] == "jobs" and recycle["hot_spare"] is True
        assert recycle["successor_pid"] == ready["spare_pid"]
        wait_until(lambda: rt.events("retired"), 30, what="the old worker to exit")
        wait_until(lambda: rt.events("hot_spare_ready")[1:], 30, what="the rebuilt spare")
        assert not rt.events("restart") and not rt.events("crash")
        assert rt.wait(rt.submit().id).status is JobStatus.SUCCEEDED
        (w,) = [w for w in rt.status()["workers"] if w["id"] == "w0" and w["state"] in ("ready", "busy")]
        assert w["pid"] == ready["spare_pid"]
    finally:
        rt.close()
