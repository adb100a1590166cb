"""The watchdog's NVML branch, driven by recorded NVML readings at the ``pynvml`` import edge.

A real dispatcher, pool and watchdog with a worker on "GPU 0" (the fault engine
with no fault: it only has to stand on a GPU slot of a machine without one).
``pynvml`` is the recorded stand-in from tests/nvml_support.py; everything above
it is the product: ``zitops.gpu.NvmlMonitor``, the watchdog's reader, the
high-water and successor-room policies, the pool's recycles. Each step waits
for the agent's own /status to show the reading it was given, so the policy
ran on that reading in the same watchdog tick.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nvml_support import H200_TOTAL_MIB, LEAKED, LOADED, NO_ROOM, RecordedNvml, Sample
from tests.runtime_support import Runtime, runtime_config, wait_until
from zitops.agent.contract import JobStatus

pytestmark = pytest.mark.slow


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordedNvml]:
    recorded = RecordedNvml(LOADED)
    monkeypatch.setitem(sys.modules, "pynvml", recorded)
    yield recorded


def _on_gpu0(tmp: Path, sets: list[str]) -> Runtime:
    # No hot spare: these readings say the GPU has room for one (auto would build it), and the
    # policies under test here are the recycles; the hot spare has its own tests.
    return Runtime(runtime_config(tmp, kind="faulty", sets=["watchdog.idle_cache_clear_mib=0",
                                                           "watchdog.hot_spare=false", *sets]), gpus=[0])


def _vram(rt: Runtime) -> dict[str, Any]:
    vram: dict[str, Any] = rt.status()["workers"][0]["vram"]
    return vram


def _read(rt: Runtime, sample: Sample, worker_mib: float) -> dict[str, Any]:
    """Wait until a watchdog tick has read ``sample`` (its numbers show in /status); the vram entry."""
    def shown() -> dict[str, Any] | None:
        v = _vram(rt)
        return v if (v["device_used_mib"], v["nvml_used_mib"]) == (sample.used_mib, worker_mib) else None

    found: dict[str, Any] = wait_until(shown, 30, what=f"the watchdog to read {sample}")
    return found


def test_recorded_readings_drive_a_high_water_recycle(tmp_path: Path, nvml: RecordedNvml) -> None:
    rt = _on_gpu0(tmp_path, ["watchdog.high_water_pct=95"])
    try:
        (w,) = rt.status()["workers"]
        assert w["gpu"] == 0 and rt.status()["nvml"] == "ok"
        nvml.play(LOADED, worker=w["pid"])
        assert rt.wait(rt.submit().id).status is JobStatus.SUCCEEDED  # a worker that ran no job is left alone
        wait_until(lambda: rt.status()["workers"][0]["jobs_done"] == 1, 30, what="the job's report")
        v = _read(rt, LOADED, 30_480)
        # Device numbers come from NVML; the allocator's from the worker (simulated by the fault engine).
        assert v["device_total_mib"] == H200_TOTAL_MIB and v["allocated_mib"] == 2048.0
        assert not rt.events("recycle"), "22% used is far below the high-water mark"
        metrics = rt.lt.call(rt.d.metrics_text)
        assert 'zitops_gpu_vram_used_mib{gpu="0"} 31020.0' in metrics
        assert f'zitops_gpu_vram_total_mib{{gpu="0"}} {float(H200_TOTAL_MIB)}' in metrics

        nvml.play(LEAKED)  # the same worker, now with the device 97% full
        (recycle,) = wait_until(lambda: rt.events("recycle"), 30, what="the high-water recycle")
        assert recycle["policy"] == "high_water" and recycle["overlap"] is False
        assert recycle["reason"] == f"high water: GPU memory 139460/{H200_TOTAL_MIB} MiB >= 95%"
        assert recycle["incarnation"] == 0 and recycle["jobs_done"] == 1
        # Never overlapped (the memory is full) and replaced by a fresh process; NVML does not list
        # the new pid yet, which is "unknown", not zero.
        ready = wait_until(lambda: [x for x in rt.status()["workers"] if x["state"] == "ready"
                                    and x["incarnation"] == 1], 30, what="the fresh worker")[0]
        assert ready["pid"] != w["pid"] and ready["vram"]["nvml_used_mib"] is None
        assert not rt.events("handover")
        assert nvml.inits == 1 and nvml.reads >= 2
    finally:
        rt.close()
    assert nvml.shutdowns == 1, "the watchdog shuts NVML down when it stops"


@pytest.mark.parametrize(("sample", "worker_mib", "overlap"), [
    (LOADED, 30_480, True),  # 112751 MiB free >= 1.15 x 30480: a second copy fits beside the first
    (NO_ROOM, 83_460, False),  # 59771 MiB free < 1.15 x 83460: stop, then start
], ids=["room", "no-room"])
def test_recorded_readings_decide_whether_a_recycle_overlaps(tmp_path: Path, nvml: RecordedNvml, sample: Sample,
                                                            worker_mib: float, overlap: bool) -> None:
    rt = _on_gpu0(tmp_path, ["watchdog.recycle_after_jobs=1"])
    try:
        (w,) = rt.status()["workers"]
        nvml.play(sample, worker=w["pid"])
        _read(rt, sample, worker_mib)  # the worker's NVML usage is known before the recycle is due
        assert rt.wait(rt.submit().id).status is JobStatus.SUCCEEDED
        (recycle,) = wait_until(lambda: rt.events("recycle"), 30, what="the recycle after 1 job")
        assert recycle["policy"] == "jobs" and recycle["overlap"] is overlap
        assert recycle["reason"] == "recycle after 1 jobs"
        if overlap:
            (handover,) = wait_until(lambda: rt.events("handover"), 30, what="the handover")
            assert handover["old_pid"] == w["pid"] and handover["gap_s"] == 0.0
        else:
            (ready,) = wait_until(lambda: rt.events("ready"), 30, what="the restarted worker")
            assert "recycle after 1 jobs" in ready["reason"] and not rt.events("handover")
    finally:
        rt.close()
