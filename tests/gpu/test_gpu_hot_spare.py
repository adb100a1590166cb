"""The hot spare on a real GPU: NVML finds room for a second copy, kill -9 of the worker, the spare serves."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.runtime_support import Runtime, pid_alive, request, runtime_config, wait_until
from zitops.agent.contract import JobStatus

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]


def test_kill_9_of_the_worker_the_next_job_runs_on_the_spare_and_a_new_spare_is_built(tmp_path: Path) -> None:
    # hot_spare: auto, so the spare exists only because NVML measured room for a second copy on this card.
    rt = Runtime(runtime_config(tmp_path, sets=["watchdog.hot_spare=auto", "engine.compile=false"]), gpus=[0])
    try:
        (ready,) = wait_until(lambda: rt.events("hot_spare_ready"), 300, what="the hot spare")
        spare = rt.status()["hot_spare"]["spares"][0]
        assert spare["pid"] == ready["spare_pid"] and spare["state"] == "ready"
        (old_pid,) = [w["pid"] for w in rt.status()["workers"] if w["state"] == "ready"]
        assert rt.wait(rt.submit(request(seed=1)).id, 120).status is JobStatus.SUCCEEDED
        t_kill = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        rec = rt.wait(rt.submit(request(seed=2)).id, 120)
        print(f"gpu hot spare: kill -9 -> next job done in {time.monotonic() - t_kill:.3f} s")
        assert rec.status is JobStatus.SUCCEEDED, rec.error
        (takeover,) = wait_until(lambda: rt.events("takeover"), 30, what="the takeover")
        assert takeover["old_pid"] == old_pid and takeover["new_pid"] == ready["spare_pid"]
        (w,) = [w for w in rt.status()["workers"] if w["id"] == "w0" and w["state"] in ("ready", "busy")]
        assert w["pid"] == ready["spare_pid"] and w["gpu"] == 0
        assert "restart" not in [e["kind"] for e in rt.events()]
        assert not pid_alive(old_pid)
        rebuilt = wait_until(lambda: rt.events("hot_spare_ready")[1:], 300, what="the rebuilt spare")[0]
        assert rebuilt["spare_pid"] not in (old_pid, ready["spare_pid"])
        assert rt.status()["hot_spare"]["spares"][0]["pid"] == rebuilt["spare_pid"]
    finally:
        rt.close()
