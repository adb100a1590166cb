"""A context-parallel group in the pool, on the CPU: one slot, two ranks; a rank killed mid-job takes the
group down, the pool restarts the whole group and the job runs again on it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.parallel_support import gone, ranks_of
from tests.runtime_support import Runtime, request, runtime_config, wait_until
from zitops.agent.contract import JobStatus
from zitops.agent.server import settle_parallel

pytestmark = pytest.mark.slow
pytest.importorskip("torch")


def test_a_rank_killed_mid_job_restarts_the_group_and_the_job_runs_again(tmp_path: Path) -> None:
    config = settle_parallel(runtime_config(tmp_path, sets=["engine.parallel.degree=2", "queue.job_timeout_s=120",
                                                            "engine.warmup=false"]))
    assert not config.profile.watchdog.standby_worker  # a group runs without spares
    rt = Runtime(config, wait_ready=False)
    try:
        # Two processes import torch and diffusers and load the model: slow on two loaded cores.
        wait_until(lambda: rt.ready()[0], 240, what="the group ready")
        status = rt.status()
        assert len(status["workers"]) == 1  # the group is one slot
        first = status["workers"][0]
        rank1 = wait_until(lambda: ranks_of(first["pid"]), 30, what="rank 1 of the group")
        rec = rt.submit(request(steps=50, width=128, height=128))
        wait_until(lambda: rt.status()["workers"][0]["current_job"] == rec.id, 60, what="the job to start")
        os.kill(rank1[0], signal.SIGKILL)
        rec = rt.wait(rec.id, 240)
        assert rec.status is JobStatus.SUCCEEDED and rec.attempts == 2, rec.error
        crash = rt.events("crash")[0]
        assert "exit code 7" in crash["reason"] and crash["job_id"] == rec.id  # zitops.worker.group.RANK_DIED_EXIT
        w = wait_until(lambda: next((w for w in rt.status()["workers"] if w["state"] == "ready"), None), 240)
        assert w["pid"] != first["pid"] and w["incarnation"] == 1
        assert gone(first["pid"]) and gone(rank1[0])
        assert ranks_of(w["pid"]) and ranks_of(w["pid"]) != rank1  # a whole new group
    finally:
        rt.close()
