"""The soak's pass rule: growth under 100 MB per series after warm-up, nothing lost, p99 drift within 10 %."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zitops.bench.soak_verdict import GROWTH_LIMIT_MIB, plot, verdict


def _samples(n: int = 80, rss_per_job: float = 0.0, slow_after: int | None = None) -> list[dict[str, Any]]:
    out = []
    for job in range(1, n + 1):
        latency = 1.0 * (1.5 if slow_after is not None and job > slow_after else 1.0)
        out.append({"job": job, "kind": "txt2img", "status": "succeeded", "latency_s": latency, "mpx_steps": 8.0,
                    "agent_rss_mib": 100.0, "worker_rss_mib": 2000.0 + rss_per_job * job, "allocated_mib": 500.0,
                    "agent_fds": 20, "worker_threads": 6})
    return out


def test_a_flat_run_passes() -> None:
    v = verdict(_samples(), warmup_jobs=10)
    assert v["pass"], v
    assert v["series"]["worker_rss_mib"]["growth"] == 0 and v["latency"]["drift"] == 0


def test_growth_over_100_mb_in_one_series_fails_it() -> None:
    # 2 MiB per job over 70 jobs after warm-up: the last quarter's median is ~105 MiB above the first's.
    v = verdict(_samples(rss_per_job=2.0), warmup_jobs=10)
    assert not v["pass"]
    assert not v["series"]["worker_rss_mib"]["ok"] and v["series"]["worker_rss_mib"]["growth"] > GROWTH_LIMIT_MIB
    assert v["series"]["agent_rss_mib"]["ok"]


def test_warm_up_growth_does_not_count() -> None:
    samples = _samples()
    for s in samples[:10]:
        s["worker_rss_mib"] = 500.0  # loading: far below the steady state
    assert verdict(samples, warmup_jobs=10)["pass"]
    assert not verdict(samples, warmup_jobs=0)["pass"]


def test_a_lost_or_failed_job_fails_the_run_and_a_cancel_does_not() -> None:
    samples = _samples()
    samples[40]["status"] = "cancelled"
    assert verdict(samples, 10)["pass"]
    samples[41]["status"] = "timeout"
    v = verdict(samples, 10)
    assert not v["pass"] and v["lost"] == [42]
    samples[41]["status"] = "failed"
    assert verdict(samples, 10)["failed"] == [42]


def test_p99_drift_over_10_percent_fails() -> None:
    v = verdict(_samples(slow_after=70), warmup_jobs=10)
    assert not v["pass"] and v["latency"]["drift"] == pytest.approx(0.5)
    assert not v["latency"]["ok"]


def test_a_count_series_has_its_own_limit() -> None:
    samples = _samples()
    for s in samples[50:]:
        s["agent_fds"] = 40  # a descriptor leak: +20 fds
    v = verdict(samples, 10)
    assert not v["pass"] and not v["series"]["agent_fds"]["ok"]


def test_the_plot_is_a_png_when_matplotlib_is_there(tmp_path: Path) -> None:
    samples = _samples()
    samples[30]["killed"] = 1234
    assert plot(samples, tmp_path / "soak.png", "test")
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_hot_spare_on_the_device_is_reported_and_the_serving_workers_own_gpu_memory_is_judged() -> None:
    # The 2026-12-07 H100 soak: after a kill the pool built a hot spare, and NVML's device-wide figure rose by
    # 25 GB while the serving worker's allocator stayed flat. The device-wide series is information; the
    # serving worker's own NVML figure is what grows when the worker leaks.
    samples = _samples()
    for s in samples:
        s["worker_nvml_mib"] = 30000.0
        s["nvml_used_mib"] = 33000.0 + (25000.0 if s["job"] > 40 else 0.0)
        s["gpu_processes"] = 2 if s["job"] > 40 else 1
    v = verdict(samples, warmup_jobs=10)
    assert v["pass"], v
    assert v["info"]["nvml_used_mib"]["growth"] == 25000.0 and "nvml_used_mib" not in v["series"]
    for s in samples:
        s["worker_nvml_mib"] = 30000.0 + (500.0 if s["job"] > 40 else 0.0)
    v = verdict(samples, warmup_jobs=10)
    assert not v["pass"] and not v["series"]["worker_nvml_mib"]["ok"]
