"""Recovery with real worker processes: kill -9, hang, crash loop, leak, high water, OOM split."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.runtime_support import (
    Runtime,
    hung_job_pid,
    pid_alive,
    request,
    runtime_config,
    wait_until,
)
from zitops.agent.contract import JobStatus
from zitops.errors import AgentUnavailable
from zitops.logbook.failures import FailureStore

pytestmark = pytest.mark.slow


def _failures(rt: Runtime) -> list[dict[str, object]]:
    return FailureStore(Path(rt.config.paths.state_dir), Path(rt.config.paths.log_dir)).recent(50)


def test_kill_9_of_a_busy_worker_requeues_and_recovers(tmp_path: Path) -> None:
    # A hang holds the job inside the engine until the kill, whatever the machine's speed.
    rt = Runtime(runtime_config(tmp_path, faults={"hang_on_job": 1}))
    try:
        rec = rt.submit()
        pid = hung_job_pid(rt, rec.id)
        os.kill(pid, signal.SIGKILL)
        rec = rt.wait(rec.id)
        assert rec.status is JobStatus.SUCCEEDED and rec.attempts == 2, rec.error
        w = wait_until(lambda: next((w for w in rt.status()["workers"] if w["state"] == "ready"), None), 30)
        assert w["pid"] != pid and w["incarnation"] == 1
        crash = rt.events("crash")[0]
        assert "killed by SIGKILL" in crash["reason"] and crash["job_id"] == rec.id
        ready = rt.events("ready")[0]
        assert ready["recovery_s"] > 0 and ready["time"] >= crash["time"]
        lost = [f for f in _failures(rt) if f["job_id"] == rec.id]
        assert lost and lost[0]["action"] == "requeue" and lost[0]["kind"] == "killed"
    finally:
        rt.close()


def test_hang_is_killed_replaced_and_the_job_fails_not_requeued(tmp_path: Path) -> None:
    cfg = runtime_config(tmp_path, faults={"hang_on_job": 1}, sets=["queue.job_timeout_s=1.5"])
    rt = Runtime(cfg)
    try:
        rec = rt.wait(rt.submit().id, 30)
        # Past its timeout once, it would likely be again: failed (issue 12), not run a second time.
        assert rec.status is JobStatus.FAILED and rec.attempts == 1, rec.error
        assert rec.error.startswith("killed for passing its timeout, not retried: killed: job ran")
        kill = rt.events("kill")[0]
        assert "past its 1.5s timeout" in kill["reason"] and kill["job_id"] == rec.id
        wait_until(lambda: rt.events("ready") and rt.ready()[0], 30, what="the replacement worker")
        assert rt.events("hang")
        assert any(f["kind"] == "hang" and f["action"] == "fail" for f in _failures(rt))
        assert rt.wait(rt.submit().id, 30).status is JobStatus.SUCCEEDED
    finally:
        rt.close()


def test_a_wedged_worker_without_heartbeats_is_killed_and_replaced(tmp_path: Path) -> None:
    # The fault (SIGSTOP) comes from outside; the fault engine only keeps the restart quick.
    rt = Runtime(runtime_config(tmp_path, kind="faulty", sets=["watchdog.heartbeat_timeout_s=1.5"]))
    try:
        (pid,) = [w["pid"] for w in rt.status()["workers"]]
        os.kill(pid, signal.SIGSTOP)  # frozen: no heartbeats; SIGTERM stays pending, SIGKILL works
        kill = wait_until(lambda: rt.events("kill"), 10, what="the hang kill")[0]
        assert kill["reason"].startswith("no heartbeat for") and kill["worker"] == "w0"
        wait_until(lambda: rt.status()["workers"][0]["incarnation"] == 1 and rt.ready()[0], 15)
        assert not pid_alive(pid)
        assert rt.wait(rt.submit().id).status is JobStatus.SUCCEEDED
    finally:
        rt.close()


def test_crash_loop_hits_the_flap_limit_and_readiness_says_why(tmp_path: Path) -> None:
    cfg = runtime_config(tmp_path, faults={"crash_on_job": 1, "every_incarnation": True},
                         sets=["watchdog.flap_limit=3", "watchdog.restart_backoff_s=0.1"])
    rt = Runtime(cfg)
    try:
        jobs = [rt.submit(request(seed=i)) for i in range(3)]
        first = rt.wait(jobs[0].id, 30)
        assert first.status is JobStatus.FAILED
        assert first.error.startswith("worker crashed twice while running this job: worker died (exit code 3)")
        wait_until(lambda: rt.status()["degraded"], 30, what="the flap limit")
        ready, reasons = rt.ready()
        assert not ready
        assert any("died 3 times" in r and "flap limit 3" in r for r in reasons), reasons
        st = rt.status()
        assert st["workers"][0]["state"] == "error"
        delays = [e["delay_s"] for e in rt.events("restart")]
        assert delays == sorted(delays) and delays[1] == 2 * delays[0]  # exponential backoff
        assert rt.lt.call(rt.d.get, jobs[2].id).status is JobStatus.QUEUED  # kept, not lost
        assert 'zitops_worker_restarts_total{reason="crash"} 2.0' in rt.lt.call(rt.d.metrics_text)
        with pytest.raises(AgentUnavailable, match="no worker can run jobs: worker w0 died 3 times"):
            rt.submit()
    finally:
        rt.close()


def test_leak_is_recycled_within_n_jobs_and_no_job_is_lost(tmp_path: Path) -> None:
    # The stop-then-start recycle (overlap off); tests/integration/test_runtime_overlap.py covers the default.
    cfg = runtime_config(tmp_path, faults={"leak_mib_per_job": 100},
                         sets=["watchdog.leak_threshold_mib=150", "watchdog.leak_consecutive_jobs=2",
                               "watchdog.overlap_recycle=false"])
    rt = Runtime(cfg)
    try:
        ids = [rt.submit(request(seed=i)).id for i in range(7)]
        for job_id in ids:
            assert rt.wait(job_id).status is JobStatus.SUCCEEDED
        (recycle,) = rt.events("recycle")
        assert recycle["policy"] == "leak" and "2 jobs in a row" in recycle["reason"]
        assert recycle["overlap"] is False and not rt.events("handover")
        # Baseline 2148 after job 1; jobs 3 and 4 end above 2148 + 150 MiB: recycled after job 4.
        assert recycle["jobs_done"] == 4 and recycle["incarnation"] == 0
        wait_until(lambda: rt.status()["workers"][0]["incarnation"] == 1, 10)
        assert any(e["kind"] == "ready" and "leak" in e["reason"] for e in rt.events())
        assert not rt.events("crash")
    finally:
        rt.close()


def test_high_water_recycles_and_oom_batch_is_split(tmp_path: Path) -> None:
    # Simulated device: 2048 baseline + 256 cache + 300 = 2604 of 2700 MiB (96%) after a job.
    cfg = runtime_config(tmp_path, faults={"simulated_total_mib": 2700, "oom_above_batch": 1},
                         sets=["watchdog.high_water_pct=95", "watchdog.idle_cache_clear_mib=0"])
    rt = Runtime(cfg)
    try:
        rec = rt.wait(rt.submit(request(batch=4)).id)
        assert rec.status is JobStatus.SUCCEEDED and len(rec.images) == 4
        assert rec.info["oom_splits"] >= 1
        ev = wait_until(lambda: rt.events("recycle"), 10, what="a high-water recycle")
        assert ev[0]["policy"] == "high_water" and "95%" in ev[0]["reason"]
        wait_until(lambda: rt.ready()[0], 15)
    finally:
        rt.close()
