"""A drill's verdict: what was observed (jobs, /status events, /readyz, /metrics) turned into checks and figures."""

from __future__ import annotations

import contextlib
import math
import re
import sqlite3
from pathlib import Path
from typing import Any

from zitops.config import AgentConfig
from zitops.drill.agent import ReadyzWatcher
from zitops.drill.judge_real import judge_nvml_leak
from zitops.drill.plan import (
    LEAK_JOBS,
    LEAK_MIB,
    LEAK_THRESHOLD_MIB,
    OOM_ABOVE_BATCH,
    OOM_BATCH,
    REAL_CPU_JOBS,
    REAL_CPU_MIB,
    REAL_CPU_THRESHOLD_MIB,
    DrillPlan,
)
from zitops.drill.report import DrillReport, Jobs


def _job_info(state_dir: str, job_id: str) -> dict[str, Any]:
    """A job's engine info from the deployment's job store (read-only; not in the public API)."""
    import json

    db = Path(state_dir) / "jobs.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        row = conn.execute("SELECT info FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return dict(json.loads(row[0])) if row else {}


def _after(events: list[dict[str, Any]], kind: str, since: float, worker: str | None = None) -> dict[str, Any] | None:
    for e in events:
        if e["kind"] == kind and e["time"] >= since and (worker is None or e.get("worker") == worker):
            return e
    return None


TIMEOUT_FAILURE = "killed for passing its timeout, not retried"
"""How a job killed for passing its timeout ends (zitops/agent/dispatch/outcomes.py)."""


def judge(report: DrillReport, plan: DrillPlan, done: Jobs, before: dict[str, Any], after: dict[str, Any],
           config: AgentConfig, watcher: ReadyzWatcher) -> None:
    """Turn what was observed into figures and checks."""
    succeeded = [j for j, r in done.final.items() if r["status"] == "succeeded"]
    failed = {j: r.get("error") for j, r in done.final.items() if r["status"] != "succeeded"}
    # A job killed for passing its timeout is failed on purpose, with a record (docs/runtime.md):
    # the hang drill's hung job ends so, and that is not a lost job.
    timed_out = [j for j, error in failed.items() if plan.kind == "hang"
                 and str(error or "").startswith(TIMEOUT_FAILURE)]
    lost = len(done.accepted) - len(succeeded) - len(timed_out)
    report.jobs = {"submitted": len(plan.bodies), "accepted": len(done.accepted), "succeeded": len(succeeded),
                   "failed": failed, "not_final": done.pending, "refused": done.refused, "lost": lost,
                   "retried": sorted(j for j, r in done.final.items() if r.get("attempts", 0) > 1)}
    report.figures["jobs_lost"] = lost
    report.check("every job was accepted", not done.refused and len(done.accepted) == len(plan.bodies),
                 "; ".join(done.refused))
    report.check("jobs lost = 0 (every accepted job succeeded, or failed for passing its timeout)", lost == 0,
                 f"{len(failed)} failed, {len(done.pending)} never finished" if lost else "")
    w_after = after["workers"]
    report.check("a worker is ready at the end", bool(after.get("ready"))
                 and any(w["state"] == "ready" for w in w_after), "; ".join(after.get("reasons", [])))
    spells = watcher.down_spells()
    report.figures["readyz_down_s"] = [round(s, 2) for s in spells]
    events, m = report.events, report.metrics
    # From when the watcher started, not its first poll: on a loaded host the crash came
    # before that poll, and the drill missed its own crash (5 of 6 concurrent runs, 2026-11-29).
    t0 = watcher.started
    if plan.kind == "crash":
        crash = _after(events, "crash", t0)
        ready = _after(events, "ready", crash["time"], crash["worker"]) if crash else None
        report.check("the crash was seen", crash is not None and "exit code 3" in crash["reason"],
                     crash["reason"] if crash else "no crash event in /status")
        report.check("a new worker became ready", ready is not None)
        if crash and ready:
            report.figures["crash_to_ready_s"] = ready.get("recovery_s")
            report.figures["crash_to_ready_wall_s"] = round(ready["time"] - crash["time"], 2)
            job = crash.get("job_id")
            report.check("the crashed job was requeued and succeeded",
                         job in done.final and done.final[job]["status"] == "succeeded"
                         and done.final[job]["attempts"] == 2, f"job {job}")
        report.check("/metrics counts the crash", m.get('zitops_recoveries_total{kind="crash"}', 0) >= 1)
    elif plan.kind == "leak" and plan.nvml:
        judge_nvml_leak(report, plan, _after(events, "recycle", t0), events)
    elif plan.kind == "leak":
        recycle = _after(events, "recycle", t0)
        # By default the successor warms while the old worker serves (a "handover",
        # then the old one is "retired"); with watchdog.overlap_recycle off it is
        # stop ("restart"), then start ("ready").
        overlapped = bool(recycle and recycle.get("overlap"))
        ready_kind, exit_kind = ("handover", "retired") if overlapped else ("ready", "restart")
        ready = _after(events, ready_kind, recycle["time"], recycle["worker"]) if recycle else None
        jobs_in_a_row, threshold, per_job = ((REAL_CPU_JOBS, REAL_CPU_THRESHOLD_MIB, REAL_CPU_MIB) if plan.real
                                             else (LEAK_JOBS, LEAK_THRESHOLD_MIB, LEAK_MIB))
        bound = jobs_in_a_row + math.ceil(threshold / per_job) + 1
        report.check("the leak was detected (a leak recycle)", recycle is not None
                     and recycle.get("policy") == "leak", recycle["reason"] if recycle else
                     f"no recycle in {len(done.accepted)} jobs (needs about {bound})")
        if recycle:
            report.figures["leak_jobs_until_recycle"] = recycle.get("jobs_done")
            report.figures["leak_allocated_at_recycle_mib"] = recycle.get("allocated_mib")
            report.check(f"recycled within {bound} jobs", (recycle.get("jobs_done") or 0) <= bound,
                         f"after {recycle.get('jobs_done')} jobs")
        report.check("a fresh worker replaced it", ready is not None)
        exited = _after(events, exit_kind, recycle["time"], recycle["worker"]) if recycle else None
        if recycle and exited:
            report.figures["leak_detected_to_exit_s"] = round(exited["time"] - recycle["time"], 2)
        if recycle and ready:
            report.figures["leak_overlap"] = overlapped
            report.figures["leak_recycled_to_ready_s"] = ready.get("warmup_s" if overlapped else "recovery_s")
            if overlapped:
                report.figures["leak_gap_s"] = ready.get("gap_s")
                report.check("/readyz never dropped during the overlapped recycle", not spells,
                             f"down for {spells} s")
                report.check("/metrics counts the overlapped recycle",
                             m.get('zitops_recoveries_total{kind="recycle_overlapped"}', 0) >= 1)
            alloc = w_after[0]["vram"]["allocated_mib"]
            report.figures["allocated_after_mib"] = alloc
            report.check("the fresh worker's memory is back near baseline",
                         alloc is not None and alloc < (recycle.get("allocated_mib") or 0), f"{alloc} MiB")
        report.check("/metrics counts the recycle", m.get('zitops_recoveries_total{kind="recycle_leak"}', 0) >= 1)
    elif plan.kind == "hang":
        kill = _after(events, "kill", t0)
        ready = _after(events, "ready", kill["time"], kill["worker"]) if kill else None
        report.check("the hang was detected and the worker killed", kill is not None
                     and "past its" in kill["reason"], kill["reason"] if kill else "no kill event")
        report.check("a new worker replaced it", ready is not None)
        report.check("one job failed for passing its timeout (not run again)", len(timed_out) == 1,
                     f"{len(timed_out)} such jobs")
        if kill and ready:
            report.figures["hang_timeout_s"] = config.profile.queue.job_timeout_s
            ran = re.search(r"job ran ([0-9.]+)s", kill["reason"])
            report.figures["hang_detected_at_job_age_s"] = float(ran.group(1)) if ran else None
            report.figures["hang_detected_to_replaced_s"] = ready.get("recovery_s")
            job = kill.get("job_id")
            report.check("the killed job is the one that failed for passing its timeout", job in timed_out,
                         f"job {job}")
        report.check("/metrics counts the kill", m.get('zitops_recoveries_total{kind="kill"}', 0) >= 1)
    elif plan.kind == "oom":
        big = [j for j in done.accepted if done.batch.get(j, 1) > OOM_ABOVE_BATCH]
        splits = {j: _job_info(config.paths.state_dir, j).get("oom_splits") for j in big}
        report.figures["oom_batch"] = OOM_BATCH
        report.figures["oom_above_batch"] = OOM_ABOVE_BATCH
        report.figures["oom_splits_per_job"] = sorted({s for s in splits.values() if s is not None})
        report.check("each over-size batch was split and succeeded", bool(big) and all(
            done.final.get(j, {}).get("status") == "succeeded" and len(done.final[j]["images"]) == OOM_BATCH
            and (splits[j] or 0) >= 1 for j in big), f"splits {splits}")
        report.check("no worker died or restarted", not any(e["kind"] in ("crash", "kill", "recycle")
                                                            for e in events))
    else:
        fig = report.figures
        report.check("a busy worker was killed with SIGKILL", "killed_pid" in fig)
        crash = _after(events, "crash", t0)
        ready = _after(events, "ready", crash["time"], crash["worker"]) if crash else None
        report.check("the agent saw the kill", crash is not None and "SIGKILL" in crash["reason"],
                     crash["reason"] if crash else "no crash event")
        report.check("a new worker became ready", ready is not None and any(
            w["pid"] and w["pid"] != fig.get("killed_pid") and w["state"] == "ready" for w in w_after))
        if ready and "killed_at" in fig:
            fig["kill_to_ready_s"] = ready.get("recovery_s")
            fig["kill_to_ready_wall_s"] = round(ready["time"] - fig["killed_at"], 2)
            job = fig.get("killed_job")
            report.check("the killed job still completed", job in done.final
                         and done.final[job]["status"] == "succeeded" and done.final[job]["attempts"] == 2,
                         f"job {job}")
        fig.pop("killed_at", None)
