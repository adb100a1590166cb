"""A hot spare that builds only while its slot is idle (watchdog.spare_build: idle), with real workers.

The serving worker is held inside a job with SIGSTOP (a process edge, as kill -9 is): the job stays
in flight for as long as the test needs, with no clock, and SIGCONT lets it finish.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.runtime_support import (
    REAL_ENGINE_SETS,
    Runtime,
    pid_alive,
    request,
    runtime_config,
    wait_until,
)
from zitops.agent.contract import JobStatus

pytestmark = pytest.mark.slow

SETS = REAL_ENGINE_SETS + [
    "watchdog.hot_spare=true", "watchdog.spare_build=idle",
    "engine.warmup=true",  # on the CPU too, so the spare's build has warm-up generations to pause
    # A stopped worker sends no heartbeats and its job does not end: both limits outlast the test.
    "watchdog.heartbeat_timeout_s=300", "queue.job_timeout_s=300",
]


def test_the_spare_waits_while_a_job_runs_builds_once_idle_and_takes_over_a_kill_9(tmp_path: Path) -> None:
    rt = Runtime(runtime_config(tmp_path, sets=SETS))
    stopped: int | None = None
    try:
        seen: list[tuple[str, dict[str, Any], list[str | None]]] = []  # each event, with the slots' jobs then
        record = rt.d.on_event

        def on_event(event: dict[str, Any]) -> None:
            record(event)
            seen.append((event["kind"], event, [s.job_id for s in rt.d.pool.slots]))

        rt.lt.call(setattr, rt.d, "on_event", on_event)
        (start,) = wait_until(lambda: rt.events("hot_spare_start"), 30, what="the hot spare's start")
        assert start["gated"] is True
        (w0,) = [w["pid"] for w in rt.status()["workers"] if w["state"] == "ready"]
        # The slot idle past the grace: the spare may build. It is still importing (seconds) when the job
        # is handed over, which closes its gate: it stops at its next piece of work.
        wait_until(lambda: rt.status()["hot_spare"]["spares"][0]["gate"] == "open", 30, what="an open gate")
        os.kill(w0, signal.SIGSTOP)
        stopped = w0
        rec = rt.submit(request(seed=3))
        (paused,) = wait_until(lambda: rt.events("hot_spare_paused"), 120, what="the spare to stop at its gate")
        spare = rt.status()["hot_spare"]["spares"][0]
        assert spare["state"] == "paused" and spare["gate"] == "closed" and spare["pid"] == start["spare_pid"]
        os.kill(w0, signal.SIGCONT)
        stopped = None
        assert rt.wait(rec.id, 120).status is JobStatus.SUCCEEDED
        (ready,) = wait_until(lambda: rt.events("hot_spare_ready"), 120, what="the spare to finish once idle")
        kinds = [kind for kind, _, _ in seen]
        pause_at, resume_at = kinds.index("hot_spare_paused"), kinds.index("hot_spare_resumed")
        assert pause_at < resume_at < kinds.index("hot_spare_ready"), kinds
        # It stopped while the job was on the slot, went on only once the slot was idle, and did no
        # build work in between: the same count of pieces done at both ends of the wait.
        assert seen[pause_at][2] == [rec.id] and seen[resume_at][2] == [None], seen
        resumed = seen[resume_at][1]
        assert resumed["done"] == paused["done"], (paused, resumed)
        startup = ready["startup_s"] is not None and rt.status()["hot_spare"]["spares"][0]["startup"]
        assert startup and startup["build_gate"]["pauses"] >= 1 and len(startup["warmup"]) >= 3, startup
        # A kill -9 of the serving worker still fails over to the (now ready) spare.
        os.kill(w0, signal.SIGKILL)
        (takeover,) = wait_until(lambda: rt.events("takeover"), 30, what="the takeover")
        assert takeover["old_pid"] == w0 and takeover["new_pid"] == ready["spare_pid"]
        assert rt.wait(rt.submit(request(seed=4)).id, 60).status is JobStatus.SUCCEEDED
        assert not pid_alive(w0) and "restart" not in [e["kind"] for e in rt.events()]
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        rt.close()


def test_always_builds_beside_a_running_job(tmp_path: Path) -> None:
    rt = Runtime(runtime_config(tmp_path, sets=[*SETS, "watchdog.spare_build=always"]))
    stopped: int | None = None
    try:
        (start,) = wait_until(lambda: rt.events("hot_spare_start"), 30, what="the hot spare's start")
        assert start["gated"] is False
        (w0,) = [w["pid"] for w in rt.status()["workers"] if w["state"] == "ready"]
        os.kill(w0, signal.SIGSTOP)
        stopped = w0
        rec = rt.submit(request(seed=3))
        # The job stays in flight (its worker is stopped) and the spare builds to the end anyway.
        wait_until(lambda: rt.events("hot_spare_ready"), 120, what="the spare, built beside the job")
        assert [w["current_job"] for w in rt.status()["workers"] if w["id"] == "w0" and w["pid"] == w0] == [rec.id]
        assert not rt.events("hot_spare_paused")
        assert rt.status()["hot_spare"]["build"] == "always"
        os.kill(w0, signal.SIGCONT)
        stopped = None
        assert rt.wait(rec.id, 120).status is JobStatus.SUCCEEDED
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        rt.close()
