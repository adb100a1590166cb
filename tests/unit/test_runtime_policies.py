"""The watchdog's pure policies and the worker protocol's messages."""

from __future__ import annotations

import pickle

import pytest

from zitops.agent.workers import watchdog as p
from zitops.profile import load_profile
from zitops.worker import protocol


def test_hang_reason_heartbeat_and_job_timeout() -> None:
    assert p.hang_reason(100.0, 95.0, 10.0, None, 60.0) is None
    assert "no heartbeat for 11.0s" in (p.hang_reason(100.0, 89.0, 10.0, None, 60.0) or "")
    why = p.hang_reason(100.0, 99.0, 10.0, 30.0, 60.0)
    assert why is not None and "past its 60s timeout" in why
    assert p.hang_reason(100.0, 99.0, 10.0, 41.0, 60.0) is None


def test_cache_clear_only_when_idle_and_over_threshold() -> None:
    assert p.should_clear_cache(True, 2000, 3500, 1024)
    assert not p.should_clear_cache(False, 2000, 3500, 1024)  # never during a job
    assert not p.should_clear_cache(True, 2000, 3000, 1024)
    assert not p.should_clear_cache(True, 2000, 9000, 0)  # 0 turns it off


def test_leak_streak_needs_consecutive_jobs_above_baseline() -> None:
    streak = 0
    history = []
    for allocated in (2100, 2700, 2800, 2000, 2700, 2700, 2700):
        streak = p.leak_streak(2048, allocated, 512, streak)
        history.append(streak)
    assert history == [0, 1, 2, 0, 1, 2, 3]
    assert p.is_leaking(3, 3) and not p.is_leaking(2, 3)
    assert p.leak_streak(None, 99999, 512, 5) == 0  # no warm baseline yet


def test_high_water_and_routine_recycle() -> None:
    assert p.over_high_water(15564.8, 16384, 95.0)
    assert not p.over_high_water(15000, 16384, 95.0)
    assert not p.over_high_water(100, 0, 95.0)  # unknown total never recycles
    assert p.recycle_due(10, 0, 10, 0) == "recycle after 10 jobs"
    assert p.recycle_due(9, 0, 10, 0) is None
    assert p.recycle_due(0, 7100, 0, 2.0) is None
    assert p.recycle_due(0, 7200, 0, 2.0) == "recycle after 2 hours"
    assert p.recycle_due(1000, 10**6, 0, 0) is None  # both off by default


def test_room_for_an_overlapped_successor() -> None:
    assert p.room_for_successor(False, None, None)  # a CPU worker needs no VRAM
    assert p.room_for_successor(True, 23000, 20000)  # 20000 x 1.15 = 23000: just fits
    assert not p.room_for_successor(True, 22999, 20000)
    assert not p.room_for_successor(True, None, 20000)  # no NVML: never overlap blind
    assert not p.room_for_successor(True, 60000, None)  # the old worker's use unknown


def test_hot_spare_wanted_on_a_gpu_with_room_and_on_the_cpu_only_when_asked() -> None:
    assert p.hot_spare_wanted("auto", True, 23000, 20000)  # auto: a GPU with room for a second copy
    assert not p.hot_spare_wanted("auto", True, 22999, 20000)
    assert not p.hot_spare_wanted("auto", True, None, 20000)  # no NVML: never blind
    assert not p.hot_spare_wanted("auto", False, None, None)  # auto: off on the CPU
    assert p.hot_spare_wanted(True, False, None, None)
    assert not p.hot_spare_wanted(True, True, 10000, 20000)  # true still needs room on a GPU
    assert not p.hot_spare_wanted(False, True, 80000, 20000)
    assert not p.hot_spare_wanted(False, False, None, None)


def test_backoff_doubles_to_its_cap_and_flap_limit() -> None:
    assert [p.backoff_delay(n, 1.0, 6.0) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 6.0, 6.0]
    deaths = [0.0, 100.0, 250.0, 290.0]
    assert p.deaths_in_window(deaths, 300.0, 60.0) == 2
    assert p.deaths_in_window(deaths, 300.0, 300.0) == 4
    assert p.flap_limit_hit(5, 5) and not p.flap_limit_hit(4, 5)


def _worker(**over: object) -> p.WorkerObservation:
    fields: dict[str, object] = dict(pid=7, state="ready", now=1000.0, last_heartbeat=999.0, spawned_at=0.0,
                                     jobs_done=3, used_mib=1000.0, total_mib=16384.0, allocated_mib=2000.0,
                                     reserved_mib=2100.0)
    fields.update(over)
    return p.WorkerObservation(**fields)  # type: ignore[arg-type]


def test_liveness_policy_kills_only_the_silent_or_overrunning_worker() -> None:
    quiet = _worker(pid=1, last_heartbeat=980.0)
    slow = _worker(pid=2, job_started=900.0)
    fine = _worker(pid=3, job_started=990.0)
    actions = p.liveness_policy([quiet, slow, fine], heartbeat_timeout_s=10.0, job_timeout_s=60.0)
    assert [type(a) for a in actions] == [p.KillWorker, p.KillWorker]
    assert [a.pid for a in actions] == [1, 2]
    assert isinstance(actions[0], p.KillWorker) and isinstance(actions[1], p.KillWorker)
    assert "no heartbeat for 20.0s" in actions[0].reason and "past its 60s timeout" in actions[1].reason


def test_memory_policy_high_water_routine_recycle_and_cache_clear() -> None:
    wd = load_profile("designer", ["watchdog.recycle_after_jobs=10"]).watchdog
    full = _worker(pid=1, used_mib=16000.0)
    assert p.memory_policy([full], wd) == [
        p.RecycleWorker(1, "high water: GPU memory 16000/16384 MiB >= 95%", "high_water")]
    assert p.memory_policy([_worker(pid=1, used_mib=16000.0, overlapped=True)], wd) == []  # two copies by design
    assert p.memory_policy([_worker(pid=1, used_mib=16000.0, jobs_done=0)], wd) == []  # never ran a job
    due = _worker(pid=2, jobs_done=10)
    assert p.memory_policy([due], wd) == [p.RecycleWorker(2, "recycle after 10 jobs", "jobs")]
    assert p.memory_policy([_worker(pid=2, jobs_done=10, state="busy")], wd) == []  # not mid-job
    cached = _worker(pid=3, reserved_mib=4000.0)
    assert p.memory_policy([cached], wd) == [p.ClearWorkerCache(3)]
    assert p.memory_policy([_worker(pid=3, reserved_mib=4000.0, clearing=True)], wd) == []
    assert p.memory_policy([_worker(pid=3, reserved_mib=4000.0, state="starting")], wd) == []


def test_after_job_policy_sets_the_baseline_then_recycles_a_leak() -> None:
    wd = load_profile("designer").watchdog
    first = p.after_job_policy(p.AfterJob(5, 2000.0, None, 0, 1), wd)
    assert (first.baseline_mib, first.leak_streak, first.actions) == (2000.0, 0, ())
    streak = 0
    actions: tuple[p.Action, ...] = ()
    for jobs in range(2, 2 + wd.leak_consecutive_jobs):
        verdict = p.after_job_policy(p.AfterJob(5, 2000.0 + wd.leak_threshold_mib + 1, 2000.0, streak, jobs), wd)
        streak, actions = verdict.leak_streak, verdict.actions
    assert streak == wd.leak_consecutive_jobs
    assert len(actions) == 1 and isinstance(actions[0], p.RecycleWorker) and actions[0].kind == "leak"
    assert f"after {wd.leak_consecutive_jobs} jobs in a row" in actions[0].reason


@pytest.mark.parametrize("msg", [
    protocol.Job("j1", {"prompt": "x", "seeds": [1]}, attempt=2),
    protocol.ClearCache(),
    protocol.Shutdown("leak"),
    protocol.Ready("w0", 123, 1, "cpu", 0.5, {"engine": "faulty"}),
    protocol.Heartbeat("w0", 1.0, "j1"),
    protocol.MemoryReport("w0", 2048.0, 2304.0, jobs_done=3),
    protocol.Result("j1", (protocol.RawImage("RGB", 1, 1, b"\0\0\0", {"seed": 1}),), 0.2, {"seeds": [1]}),
    protocol.Failure("j1", "EngineError", "boom", "Traceback ..."),
])
def test_messages_pickle_round_trip_and_are_frozen(msg: object) -> None:
    assert pickle.loads(pickle.dumps(msg)) == msg
    with pytest.raises(AttributeError):
        msg.__setattr__("reason", "changed")
