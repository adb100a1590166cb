"""The real leak drill's verdict on a GPU: NVML's high-water rule caught real CUDA memory, and the recycle returned it."""

from __future__ import annotations

from typing import Any

from zitops.drill.plan import BACK_TO_BASELINE_MIB, REAL_GPU_JOBS, DrillPlan
from zitops.drill.report import DrillReport


def judge_nvml_leak(report: DrillReport, plan: DrillPlan, recycle: dict[str, Any] | None,
                    events: list[dict[str, Any]]) -> None:
    """Checks: a high-water recycle within 1 + REAL_GPU_JOBS + 1 jobs, seen by NVML and the allocator, memory back.

    Job 1 does not leak (the baseline is read after it), so leaking job REAL_GPU_JOBS is job 1 + REAL_GPU_JOBS.
    """
    bound = 1 + REAL_GPU_JOBS + 1
    fig = report.figures
    leak = float(plan.faults["leak_mib_per_job"])
    fig["leak_mib_per_job"] = leak
    report.check("the leak was detected by NVML's high-water rule", recycle is not None
                 and recycle.get("policy") == "high_water", recycle["reason"] if recycle else
                 f"no recycle (the line is crossed by job {1 + REAL_GPU_JOBS})")
    if recycle:
        fig["leak_jobs_until_recycle"] = recycle.get("jobs_done")
        fig["leak_reason"] = recycle["reason"]
        # The periodic round may land just after the crossing job: one job of slack.
        report.check(f"recycled within {bound} jobs", (recycle.get("jobs_done") or 0) <= bound,
                     f"after {recycle.get('jobs_done')} jobs")
        ready = next((e for e in events if e["kind"] in ("ready", "handover") and e["time"] >= recycle["time"]), None)
        report.check("a fresh worker replaced it", ready is not None)
    base, peak = fig.get("baseline_device_used_mib"), fig.get("peak_device_used_mib")
    need = 0.9 * leak * (REAL_GPU_JOBS - 1)
    report.check(f"NVML saw the leak (used rose by >= {need:.0f} MiB)", base is not None and peak is not None
                 and peak - base >= need, f"baseline {base}, peak {peak}")
    a_base, a_peak = fig.get("baseline_allocated_mib"), fig.get("peak_allocated_mib")
    report.check(f"torch's allocator saw the leak (allocated rose by >= {need:.0f} MiB)", a_base is not None
                 and a_peak is not None and a_peak - a_base >= need, f"baseline {a_base}, peak {a_peak}")
    after = fig.get("device_used_after_mib")
    report.check(f"NVML's used memory after the recycle is within {BACK_TO_BASELINE_MIB:.0f} MiB of the baseline",
                 base is not None and after is not None and after - base <= BACK_TO_BASELINE_MIB,
                 f"baseline {base}, after {after}")
    m = report.metrics
    report.check("/metrics counts the recycle", m.get('zitops_recoveries_total{kind="recycle_high_water"}', 0) >= 1)
