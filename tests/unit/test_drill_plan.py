"""Drill planning, verdict and report formatting, without processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from zitops.drill import (
    KINDS,
    DrillReport,
    ReadyzWatcher,
    build_deployment,
    format_report,
    plan_drill,
)
from zitops.errors import InvalidRequest


def test_each_kind_arms_only_its_own_fault() -> None:
    armed = {"leak": "leak_mib_per_job", "crash": "crash_on_job", "hang": "hang_on_job",
             "oom": "oom_above_batch", "kill": None}
    for kind in KINDS:
        plan = plan_drill(kind)
        faults = set(plan.faults) - {"job_seconds"}
        assert faults == ({armed[kind]} if armed[kind] else set()), kind
        assert plan.bodies and all(b["width"] == 64 for b in plan.bodies)


def test_fault_job_index_stays_within_the_jobs_submitted() -> None:
    assert plan_drill("crash", 2).faults["crash_on_job"] == 2
    assert plan_drill("hang", 1).faults["hang_on_job"] == 1


def test_oom_plan_mixes_oversize_and_single_batches() -> None:
    batches = [b.get("batch", 1) for b in plan_drill("oom", 4).bodies]
    assert batches == [4, 1, 4, 1]


@pytest.mark.parametrize(("kind", "jobs", "needle"), [
    ("flood", None, "unknown kind 'flood'; use one of leak, crash, hang, oom, kill"),
    ("crash", 0, "--jobs 0: give 1..200"),
    ("leak", 201, "--jobs 201: give 1..200"),
])
def test_bad_plans_are_refused_in_one_line(kind: str, jobs: int | None, needle: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        plan_drill(kind, jobs)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_build_deployment_renders_a_loopback_fault_config(tmp_path: Path) -> None:
    path, config = build_deployment(tmp_path / "d", 45678, {"crash_on_job": 2}, ("queue.job_timeout_s=3",))
    data = yaml.safe_load(path.read_text())
    assert data["engine"] == config.model_dump(mode="json")["engine"]
    assert config.engine.kind == "faulty" and config.engine.faults.crash_on_job == 2
    assert config.engine.faults.inner == "synthetic"
    assert config.host == "127.0.0.1" and config.port == 45678
    assert config.profile.queue.job_timeout_s == 3
    assert all(Path(p).is_dir() and Path(p).is_relative_to(tmp_path) for p in config.paths.as_paths().values())


def test_down_spells_count_only_outages_after_first_ready() -> None:
    w = ReadyzWatcher("http://127.0.0.1:1")
    w.changes = [{"time": 0.0, "ready": False, "reasons": ["starting"]},
                 {"time": 1.0, "ready": True, "reasons": []},
                 {"time": 3.0, "ready": False, "reasons": ["no worker ready (w0: dead)"]},
                 {"time": 4.5, "ready": True, "reasons": []},
                 {"time": 9.0, "ready": False, "reasons": ["x"]}]  # never came back: not a finished spell
    assert w.down_spells() == [1.5]


def test_report_passes_only_with_checks_all_ok_and_no_error() -> None:
    r = DrillReport(kind="crash", directory="/tmp/x", kept=False)
    assert not r.ok  # no checks: nothing was shown
    r.check("a", True)
    assert r.ok
    r.check("b", False, "why")
    assert not r.ok
    lines = format_report(r)
    assert lines[0].startswith("drill crash: FAIL")
    assert "    FAIL b: why" in lines and "    ok   a" in lines
    ok = DrillReport(kind="oom", directory="/tmp/y", kept=True, error="the drill agent exited")
    ok.check("a", True)
    assert not ok.ok and "  error       the drill agent exited" in format_report(ok)
    assert ok.to_dict()["ok"] is False


def test_the_real_leak_uses_the_real_engine_and_on_a_gpu_a_high_water_line_the_leak_crosses_at_its_job() -> None:
    from zitops.drill.plan import REAL_GPU_ALLOWANCE_MIB, REAL_GPU_JOBS, real_gpu_leak_mib

    host = plan_drill("leak", real=True)
    assert host.real and not host.nvml
    assert host.faults["inner"] == "diffusers" and host.faults["leak_memory"] == "real"
    assert "watchdog.leak_threshold_mib=48" in host.sets and "watchdog.hot_spare=false" in host.sets
    used, total = 700.0, 143771.0
    gpu = plan_drill("leak", real=True, gpu_mib=(used, total))
    # One warm job that does not leak (the baseline is read after it), the leaking ones, and a few more.
    assert gpu.nvml and len(gpu.bodies) == 1 + REAL_GPU_JOBS + 3 and gpu.faults["leak_from_job"] == 2
    leak = real_gpu_leak_mib(total)
    assert gpu.faults["leak_mib_per_job"] == leak == 4096
    (line,) = [float(s.split("=")[1]) * total / 100 for s in gpu.sets if s.startswith("watchdog.high_water_pct=")]
    # The warm worker may take anything in (0, 2 x allowance): REAL_GPU_JOBS - 1 leaking jobs stay under
    # the line, REAL_GPU_JOBS cross it (the H200 run of 2026-11-29 measured a warm tiny worker at 1484 MiB).
    for worker in (64.0, 1484.0, 2 * REAL_GPU_ALLOWANCE_MIB - 64):
        assert used + worker + leak * (REAL_GPU_JOBS - 1) < line < used + worker + leak * REAL_GPU_JOBS
    # The allocator's rule is out of reach there, so NVML's path is the one that must act.
    assert "watchdog.leak_threshold_mib=10000000" in gpu.sets
    assert plan_drill("leak", real=True, gpu_mib=(500.0, 24576.0)).faults["leak_mib_per_job"] == 1024


def test_real_is_for_the_leak_drill_only() -> None:
    with pytest.raises(InvalidRequest, match="--real: only the leak drill has a real mode, not 'crash'"):
        plan_drill("crash", real=True)
