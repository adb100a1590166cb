"""The watchdog's pure policies and the worker protocol's messages."""

from __future__ import annotations

import pickle

import pytest

from zitops.agent import watchdog as p
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


def test_backoff_doubles_to_its_cap_and_flap_limit() -> None:
    assert [p.backoff_delay(n, 1.0, 6.0) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 6.0, 6.0]
    deaths = [0.0, 100.0, 250.0, 290.0]
    assert p.deaths_in_window(deaths, 300.0, 60.0) == 2
    assert p.deaths_in_window(deaths, 300.0, 300.0) == 4
    assert p.flap_limit_hit(5, 5) and not p.flap_limit_hit(4, 5)


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
