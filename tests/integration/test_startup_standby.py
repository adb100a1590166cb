"""Standby spares with real spawned workers: a restart or recycle starts in the pre-imported spare.

Each test kills a worker or a spare: that is the fault, so the fault engine (no fault of
its own) keeps the restarts quick. The real engine's spare, preloaded pipeline and pixels
after a restart are covered by tests/integration/test_standby_preload_runtime.py.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.runtime_support import Runtime, pid_alive, request, runtime_config, wait_until
from zitops.agent.contract import JobStatus

pytestmark = pytest.mark.slow


def _job(rt: Runtime, seed: int = 1) -> None:
    assert rt.wait(rt.submit(request(seed=seed)).id).status is JobStatus.SUCCEEDED


def _spare(rt: Runtime) -> dict[str, Any]:
    # A spare reports when its imports are done; until then it shows as importing.
    (spare,) = wait_until(lambda: [s for s in rt.status()["standby"]["spares"] if s["state"] == "idle"], 90,
                          what="a standby spare done importing")
    assert spare["imports_s"] >= 0 and spare["rss_mib"] > 0
    return dict(spare)


def _phases_consistent(startup: dict[str, Any]) -> None:
    parts = [startup["process_start_s"], startup["init_s"], startup["imports_s"], startup["engine_setup_s"]]
    assert all(isinstance(p, float | int) and p >= 0 for p in parts), startup
    assert sum(parts) <= startup["total_s"] + 0.002  # each part is rounded to the millisecond
    assert startup["warmup_s"] is None and startup["warmup"].startswith("none")


def _restarted(rt: Runtime, old_pid: int) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        w = rt.status()["workers"][0]
        return w if w["state"] == "ready" and w["pid"] not in (None, old_pid) else None

    result: dict[str, Any] = wait_until(ready, 90, what="the restarted worker")
    return result


def test_a_crash_restart_starts_in_the_spare_and_a_fresh_spare_follows(tmp_path: Path) -> None:
    rt = Runtime(runtime_config(tmp_path, kind="faulty"))
    try:
        (first,) = rt.status()["workers"]
        assert first["startup"]["source"] == "spawn"
        _phases_consistent(first["startup"])
        assert rt.status()["standby"]["spares"] == []  # not while the first worker has yet to run a job
        _job(rt)  # after its first job, the slot gets its spare
        spare = _spare(rt)
        assert spare["pid"] != first["pid"] and spare["gpu"] is None
        os.kill(first["pid"], signal.SIGKILL)
        worker = _restarted(rt, first["pid"])
        # The Ready came from the process that was waiting as the spare.
        assert worker["pid"] == spare["pid"] and worker["incarnation"] == 1
        startup = worker["startup"]
        assert startup["source"] == "standby" and startup["standby"]["pid"] == spare["pid"]
        assert startup["imports_s"] < startup["standby"]["imports_s"] or startup["imports_s"] == 0.0
        _phases_consistent(startup)
        (ready,) = rt.events("ready")
        assert ready["standby_pid"] == spare["pid"]
        _job(rt, 3)
        fresh = _spare(rt)
        assert fresh["pid"] not in (spare["pid"], first["pid"]) and pid_alive(fresh["pid"])
        metrics = rt.lt.call(rt.d.metrics_text)
        assert 'zitops_worker_starts_total{source="standby"} 1.0' in metrics
        assert 'zitops_worker_starts_total{source="spawn"} 1.0' in metrics
        assert 'zitops_worker_startup_seconds{phase="total",worker="w0"}' in metrics
        assert "zitops_standby_workers 1.0" in metrics
    finally:
        rt.close()
    # Shutdown leaves no spare and no worker behind.
    assert not pid_alive(fresh["pid"]) and not pid_alive(worker["pid"])
    assert rt.d.pool.standby.spares == {}


def test_a_killed_spare_is_replaced_and_an_overlapped_successor_uses_the_spare(tmp_path: Path) -> None:
    rt = Runtime(runtime_config(tmp_path, kind="faulty", sets=["watchdog.restart_backoff_s=0.1"]))
    try:
        _job(rt)
        spare = _spare(rt)
        os.kill(spare["pid"], signal.SIGKILL)
        (died,) = wait_until(lambda: rt.events("standby_died"), 10, what="the spare's death")
        assert str(spare["pid"]) in died["reason"] and "SIGKILL" in died["reason"]
        replaced = wait_until(lambda: [s for s in rt.status()["standby"]["spares"] if s["pid"] != spare["pid"]],
                              20, what="a replacement spare")[0]
        assert pid_alive(replaced["pid"])
        # A routine recycle warms its successor in the spare; the slot never goes down.
        (old,) = rt.status()["workers"]
        rt.lt.call(lambda: rt.d.pool.recycle(rt.d.pool.slots[0], "test recycle", kind="jobs"))
        (handover,) = wait_until(lambda: rt.events("handover"), 20, what="the handover")
        assert handover["new_pid"] == replaced["pid"] == handover["standby_pid"]
        assert handover["old_pid"] == old["pid"]
        assert rt.status()["workers"][0]["startup"]["source"] == "standby"
    finally:
        rt.close()


def test_with_the_knob_off_workers_spawn_cold_and_no_spare_exists(tmp_path: Path) -> None:
    rt = Runtime(runtime_config(tmp_path, kind="faulty", sets=["watchdog.standby_worker=false"]))
    try:
        (first,) = rt.status()["workers"]
        os.kill(first["pid"], signal.SIGKILL)
        worker = _restarted(rt, first["pid"])
        _job(rt)  # a spare would be started right when this job's report arrives
        assert rt.status()["standby"] == {"enabled": False, "used": 0, "spares": [], "off": {}}
        assert worker["startup"]["source"] == "spawn" and "standby" not in worker["startup"]
        _phases_consistent(worker["startup"])
        (ready,) = rt.events("ready")
        assert "standby_pid" not in ready
    finally:
        rt.close()
