"""Overlapped recycles with real worker processes: the successor warms before the old worker retires."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.runtime_support import Runtime, pid_alive, request, runtime_config, wait_until
from zitops.agent.contract import JobStatus

pytestmark = pytest.mark.slow

LEAK_SETS = ["watchdog.leak_threshold_mib=150", "watchdog.leak_consecutive_jobs=2", "queue.depth=64",
             # Readiness also drops on heartbeats older than 3 intervals; on 2 loaded cores 0.6 s is tight.
             "watchdog.heartbeat_interval_s=0.5"]


class _Transitions:
    """Readiness and worker states at every recovery event, taken on the loop as the pool records it.

    Readiness is a function of state, and every change of a slot's state that can take it down
    (crash, kill, restart, plain recycle, flap limit) is recorded as an event: evaluating it at
    each event, in the same loop callback, sees every transition instead of sampling a clock.
    """

    def __init__(self, rt: Runtime) -> None:
        self.seen: list[tuple[str, bool, list[str], list[str]]] = []
        self.next_states: dict[str, list[str]] = {}  # /status's worker states one loop callback later
        record = rt.d.on_event

        def after(kind: str) -> None:
            self.next_states.setdefault(kind, [w["state"] for w in rt.d.status()["workers"]])

        def on_event(event: dict[str, Any]) -> None:
            record(event)
            ready, reasons = rt.d.readiness()
            self.seen.append((event["kind"], ready, reasons, [w.state for w in rt.d.pool.workers()]))
            rt.lt.loop.call_soon(after, event["kind"])

        rt.lt.call(setattr, rt.d, "on_event", on_event)

    def kinds(self) -> list[str]:
        """The event kinds seen, in order."""
        return [kind for kind, *_ in self.seen]


def test_leak_recycle_overlaps_readiness_never_drops_and_no_job_is_lost(tmp_path: Path) -> None:
    cfg = runtime_config(tmp_path, faults={"leak_mib_per_job": 100, "job_seconds": 0.25, "setup_seconds": 0.8},
                         sets=LEAK_SETS)
    rt = Runtime(cfg)
    try:
        (old_pid,) = [w["pid"] for w in rt.status()["workers"]]
        seen = _Transitions(rt)
        ids = [rt.submit(request(seed=i)).id for i in range(14)]
        records = [rt.wait(job_id) for job_id in ids]
        (handover,) = wait_until(lambda: rt.events("handover"), 30, what="the handover")
        wait_until(lambda: rt.events("retired"), 30, what="the old worker to exit")
        kinds = seen.kinds()
        assert not {"crash", "kill", "restart", "ready", "flap_limit", "successor_failed"} & set(kinds), kinds
        at_recycle, at_handover = kinds.index("recycle"), kinds.index("handover")
        assert at_recycle < at_handover < kinds.index("retired"), kinds
        assert all(ready for _, ready, _, _ in seen.seen), [s for s in seen.seen if not s[1]]
        # /status listed the successor loading beside the serving worker, right after the recycle began.
        assert sorted(seen.next_states["recycle"]) in (["busy", "warming"], ["ready", "warming"])
        assert sorted(seen.seen[at_handover][3]) == ["ready", "retiring"]  # the new one took the slot
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
