"""Overlapped recycles with real worker processes: the successor warms before the old worker retires."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.runtime_support import Runtime, pid_alive, request, runtime_config, wait_until
from zitops.agent.contract import JobStatus

pytestmark = pytest.mark.slow

LEAK_SETS = ["watchdog.leak_threshold_mib=150", "watchdog.leak_consecutive_jobs=2", "queue.depth=64",
             # Readiness also drops on heartbeats older than 3 intervals; on 2 loaded cores 0.6 s is tight.
             "watchdog.heartbeat_interval_s=0.5"]


class _ReadinessProbe:
    """Polls readiness every 10 ms on a thread and keeps every not-ready answer."""

    def __init__(self, rt: Runtime) -> None:
        self.rt, self.polls, self.down = rt, 0, []  # type: ignore[var-annotated]
        self.warming_seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            ready, reasons = self.rt.ready()
            self.polls += 1
            if not ready:
                self.down.append(reasons)
            if any(w["state"] == "warming" for w in self.rt.status()["workers"]):
                self.warming_seen = True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_leak_recycle_overlaps_readiness_never_drops_and_no_job_is_lost(tmp_path: Path) -> None:
    cfg = runtime_config(tmp_path, faults={"leak_mib_per_job": 100, "job_seconds": 0.25, "setup_seconds": 0.8},
                         sets=LEAK_SETS)
    rt = Runtime(cfg)
    try:
        (old_pid,) = [w["pid"] for w in rt.status()["workers"]]
        probe = _ReadinessProbe(rt)
        try:
            ids = [rt.submit(request(seed=i)).id for i in range(14)]
            records = [rt.wait(job_id) for job_id in ids]
            (handover,) = wait_until(lambda: rt.events("handover"), 15, what="the handover")
            wait_until(lambda: rt.events("retired"), 15, what="the old worker to exit")
        finally:
            probe.stop()
        assert probe.polls > 50 and probe.down == [], probe.down[:3]
        assert probe.warming_seen  # /status listed the successor while it loaded
        assert all(r.status is JobStatus.SUCCEEDED and r.attempts == 1 for r in records)
        (recycle,) = rt.events("recycle")
        assert recycle["policy"] == "leak" and recycle["overlap"] is True and recycle["gap_s"] == 0.0
        assert handover["old_pid"] == old_pid and handover["new_pid"] != old_pid and handover["gap_s"] == 0.0
        assert handover["warmup_s"] >= 0.8  # the successor's simulated load time
        # The queue never ran dry, so the old worker was busy at the handover and finished that job itself.
        assert handover["old_job_id"] in ids
        assert not pid_alive(old_pid)
        assert not rt.events("crash") and not rt.events("restart")
        w = rt.status()["workers"]
        assert len(w) == 1 and w[0]["pid"] == handover["new_pid"] and w[0]["incarnation"] == 1
        assert w[0]["jobs_done"] >= 1  # jobs after the handover ran on the successor
        assert w[0]["jobs_total"] == len(ids)  # exact across the two processes
        assert rt.wait(rt.submit().id).status is JobStatus.SUCCEEDED
        assert 'zitops_recoveries_total{kind="recycle_overlapped"} 1.0' in rt.lt.call(rt.d.metrics_text)
    finally:
        rt.close()


def test_a_successor_that_fails_setup_leaves_the_old_worker_serving_then_recycles_plainly(tmp_path: Path) -> None:
    # A cold spawn, so the old worker runs jobs while the successor starts and fails
    # (a standby spare fails within milliseconds, before the next job ends).
    cfg = runtime_config(tmp_path, faults={"leak_mib_per_job": 100, "job_seconds": 0.1,
                                           "fail_setup_incarnation": 1},
                         sets=LEAK_SETS + ["watchdog.standby_worker=false"])
    rt = Runtime(cfg)
    try:
        ids = [rt.submit(request(seed=i)).id for i in range(14)]
        for job_id in ids:
            rec = rt.wait(job_id)
            assert rec.status is JobStatus.SUCCEEDED and rec.attempts == 1, rec.error
        wait_until(lambda: rt.events("ready"), 15, what="the plainly recycled worker")
        first, second = rt.events("recycle")
        (failed,) = rt.events("successor_failed")
        assert first["overlap"] is True and second["overlap"] is False
        assert "simulated setup failure in incarnation 1" in failed["reason"]
        assert first["time"] <= failed["time"] <= second["time"]
        # The old worker (incarnation 0) kept running jobs while its successor failed.
        assert second["incarnation"] == 0 and second["jobs_done"] > first["jobs_done"]
        assert not rt.events("handover") and not rt.events("crash")
        wait_until(lambda: rt.status()["workers"][0]["incarnation"] == 2 and rt.ready()[0], 15)
        assert 'zitops_recoveries_total{kind="successor_failed"} 1.0' in rt.lt.call(rt.d.metrics_text)
    finally:
        rt.close()
