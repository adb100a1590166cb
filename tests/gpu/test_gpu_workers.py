"""Worker processes on real GPUs: NVML samples each worker's own pid, one worker per visible GPU."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from tests.runtime_support import Runtime, request, runtime_config, wait_until
from zitops.agent.contract import JobStatus

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]
torch = pytest.importorskip("torch")


def _vram_seen(rt: Runtime, worker: str) -> dict[str, Any] | None:
    """The worker's vram entry once NVML matched its pid and its allocator reported real memory."""
    for w in rt.status()["workers"]:
        v = w["vram"]
        if w["id"] == worker and (v["nvml_used_mib"] or 0) > 0 and (v["allocated_mib"] or 0) > 0:
            return dict(w)
    return None


def test_nvml_samples_the_workers_own_pid(tmp_path: Path) -> None:
    rt = Runtime(runtime_config(tmp_path), gpus=[0])
    try:
        assert rt.wait(rt.submit(request(batch=2, width=256, height=256)).id, 120).status is JobStatus.SUCCEEDED
        w = wait_until(lambda: _vram_seen(rt, "w0"), 60, what="NVML to report the worker's pid")
        v = w["vram"]
        assert w["gpu"] == 0 and v["simulated"] is False
        assert 0 < v["allocated_mib"] <= v["reserved_mib"] < v["nvml_used_mib"] <= v["device_used_mib"]
        assert v["device_used_mib"] < v["device_total_mib"]
        assert rt.status()["nvml"] == "ok"
        metrics = rt.lt.call(rt.d.metrics_text)
        assert 'zitops_gpu_vram_used_mib{gpu="0"}' in metrics and 'zitops_gpu_vram_total_mib{gpu="0"}' in metrics
    finally:
        rt.close()


def test_one_worker_per_visible_gpu(tmp_path: Path) -> None:
    count = torch.cuda.device_count()
    if count < 2:
        pytest.skip(f"one worker per GPU needs at least 2 GPUs; this machine has {count}")
    rt = Runtime(runtime_config(tmp_path))  # gpus: auto, through NVML
    try:
        workers = rt.status()["workers"]
        assert sorted(w["gpu"] for w in workers) == list(range(count))
        wait_until(lambda: all(w["state"] == "ready" for w in rt.status()["workers"]), 300, what="every worker")

        async def submit_all() -> list[str]:
            # One loop callback: each idle worker takes one job at once.
            return [(await rt.d.submit(request(seed=i, width=256, height=256))).id for i in range(2 * count)]

        recs = [rt.wait(job_id, 120) for job_id in rt.lt.run(submit_all())]
        assert all(r.status is JobStatus.SUCCEEDED for r in recs), [r.error for r in recs]
        assert {r.worker for r in recs} == {w["id"] for w in workers}
        # Each worker's pid shows up in the NVML process list of its own GPU, and of no other.
        seen = [wait_until(functools.partial(_vram_seen, rt, w["id"]), 60, what=f"NVML for {w['id']}")
                for w in workers]
        assert len({s["pid"] for s in seen}) == count
    finally:
        rt.close()
