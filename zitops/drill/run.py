"""Running a drill end to end: start the agent, submit the jobs (and the kill), wait, judge, tear down.

The agent is always torn down (SIGTERM, then SIGKILL of its process group)
and the directory removed unless kept; a SIGTERM or SIGINT to the drill
exits through that teardown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from zitops.drill.agent import POLL_S, AgentProcess, ReadyzWatcher, build_deployment, free_port
from zitops.drill.judge import judge
from zitops.drill.plan import BACK_TO_BASELINE_MIB, REAL_NVML_INTERVAL_S, plan_drill
from zitops.drill.report import DrillReport, Jobs
from zitops.errors import InvalidRequest, ZitopsError

WINDOW = 8  # jobs in flight at once; below the queue cap so a submit is never refused
KILL_AFTER_S = 0.3


# --- signals: exit through the teardown, but never mid-spawn ------------------------------

_signals: dict[str, Any] = {"spawning": False, "pending": None}


def exit_on_signal(signum: int, _frame: Any) -> None:
    """A SIGTERM/SIGINT handler for the CLI: raise SystemExit so the teardown runs.

    While the agent is being spawned the signal waits: raised inside Popen it
    would lose the agent's pid, and with it the teardown.
    """
    if _signals["spawning"]:
        _signals["pending"] = signum
        return
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _spawning() -> Iterator[None]:
    _signals["spawning"] = True
    try:
        yield
    finally:
        _signals["spawning"] = False
    signum, _signals["pending"] = _signals["pending"], None
    if signum is not None:
        raise SystemExit(128 + signum)


def _run_jobs(agent: AgentProcess, bodies: tuple[dict[str, Any], ...], deadline: float,
              tick: Callable[[], None] | None = None) -> Jobs:
    """Submit every body with at most WINDOW in flight, polling until all are final or the deadline."""
    jobs = Jobs()
    todo = list(bodies)
    while (todo or jobs.pending) and time.monotonic() < deadline:
        while todo and len(jobs.pending) < WINDOW:
            code, data, retry = agent.submit(todo[0])
            if code == 202:
                jobs.accepted.append(data["id"])
                jobs.batch[data["id"]] = int(todo[0].get("batch", 1))
                todo.pop(0)
            elif code in (429, 503) and retry is not None:
                time.sleep(min(retry, 1.0))  # a worker is down or the queue is full: back off and retry
                break
            else:
                jobs.refused.append(f"HTTP {code}: {data}")
                todo.pop(0)
        for job_id in jobs.pending:
            record = agent.job(job_id)
            if record["status"] in ("succeeded", "failed", "cancelled"):
                jobs.final[job_id] = record
        if tick is not None:
            tick()
        time.sleep(POLL_S)
    return jobs


def _wait_recovered(agent: AgentProcess, deadline: float) -> dict[str, Any]:
    """Wait (bounded) until every worker is ready again and idle; the last /status."""
    st = agent.status()
    while time.monotonic() < deadline:
        if st.get("ready") and all(w["state"] == "ready" for w in st["workers"]):
            break
        time.sleep(0.1)
        st = agent.status()
    return st


def _first_gpu_mib() -> tuple[float, float] | None:
    """NVML's (used, total) MiB on GPU 0 now, or None without a GPU (the real leak drill's line)."""
    from zitops.gpu import NvmlMonitor

    with NvmlMonitor([0]) as nvml:
        samples = nvml.sample() if nvml.available else []
    return (samples[0].used_mib, samples[0].total_mib) if samples else None


class _MemoryPeak:
    """A drill tick: the highest device-used and allocated MiB /status showed for the first worker slot."""

    def __init__(self, agent: AgentProcess, report: DrillReport) -> None:
        self.agent = agent
        self.report = report

    def __call__(self) -> None:
        vram = (self.agent.status()["workers"] or [{}])[0].get("vram") or {}
        for key, name in (("device_used_mib", "peak_device_used_mib"), ("allocated_mib", "peak_allocated_mib")):
            if vram.get(key) is not None:
                self.report.figures[name] = max(self.report.figures.get(name, 0.0), float(vram[key]))


def _wait_back_to(agent: AgentProcess, baseline: float, slack: float, deadline: float) -> float | None:
    """Wait (bounded) until the device's used memory is within ``slack`` of ``baseline``; the last value."""
    used = None
    while time.monotonic() < deadline:
        used = (agent.status()["workers"] or [{}])[0].get("vram", {}).get("device_used_mib")
        if used is not None and used <= baseline + slack:
            break
        time.sleep(POLL_S)
    return used


def run_drill(kind: str, jobs: int | None = None, keep: Path | None = None, timeout_s: float = 120.0,
              real: bool = False, profile: str = "designer") -> DrillReport:
    """Run drill ``kind`` end to end and return its report (the agent is always torn down).

    ``profile``: the disposable agent's profile (a built-in name or a YAML file), e.g. the deployment's.

    ``real`` (leak only): the diffusers engine keeps real memory per job (docs/drills.md "The real leak").
    """
    plan = plan_drill(kind, jobs, real=real, gpu_mib=_first_gpu_mib() if real else None)
    if timeout_s <= 0:
        raise InvalidRequest(f"--timeout {timeout_s:g}: give a positive number of seconds")
    if keep is not None:
        keep = keep.expanduser().absolute()
        if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
            raise InvalidRequest(f"--keep {keep}: must be a new or empty directory")
        keep.mkdir(parents=True, exist_ok=True)
        out = keep
    else:
        out = Path(tempfile.mkdtemp(prefix=f"zitops-drill-{kind}-"))
    report = DrillReport(kind=kind, directory=str(out), kept=keep is not None)
    started = time.monotonic()
    agent: AgentProcess | None = None
    watcher: ReadyzWatcher | None = None
    try:
        port = free_port()
        config_path, config = build_deployment(out, port, plan.faults, plan.sets, profile=profile)
        with _spawning():
            agent = AgentProcess(config_path, port, out / "agent.out")
        report.url, report.agent_pid = agent.url, agent.pid
        report.figures["agent_start_to_ready_s"] = round(agent.wait_ready(60.0), 2)
        watcher = ReadyzWatcher(agent.url)
        watcher.start()
        before = agent.status()
        report.worker_pids = [w["pid"] for w in before["workers"] if w["pid"]]
        deadline = started + timeout_s
        tick = _Killer(agent, report) if kind == "kill" else _MemoryPeak(agent, report) if real else None
        bodies = plan.bodies
        warm = Jobs()
        if plan.nvml:
            # Job 1 does not leak: the baseline is a worker that has run a job (CUDA workspaces,
            # the allocator's cache), the state its successor is compared in after the recycle.
            warm, bodies = _run_jobs(agent, bodies[:1], deadline), bodies[1:]
            time.sleep(3 * REAL_NVML_INTERVAL_S)  # NVML is read once a round: let a round see the job's end
            before = agent.status()
        if real:
            report.figures["baseline_device_used_mib"] = before["workers"][0]["vram"]["device_used_mib"]
            report.figures["baseline_allocated_mib"] = before["workers"][0]["vram"]["allocated_mib"]
        done = _run_jobs(agent, bodies, deadline, tick).merged(warm)
        # A real engine's successor imports torch and diffusers: it gets longer to come up.
        after = _wait_recovered(agent, min(deadline, time.monotonic() + (60.0 if real else 15.0)))
        if plan.nvml and report.figures["baseline_device_used_mib"] is not None:
            report.figures["device_used_after_mib"] = _wait_back_to(
                agent, report.figures["baseline_device_used_mib"], BACK_TO_BASELINE_MIB,
                min(deadline, time.monotonic() + 15.0))
            after = agent.status()
        watcher.stop()
        report.worker_pids += [w["pid"] for w in after["workers"] if w["pid"] and w["pid"] not in report.worker_pids]
        report.events = [e for e in after.get("recoveries", []) if e["kind"] != "nvml"]
        report.readyz = watcher.changes
        report.metrics = agent.metrics()
        judge(report, plan, done, before, after, config, watcher)
    except ZitopsError as exc:
        report.error = str(exc)
    except Exception as exc:  # the drill itself broke: report it, never leave the agent running
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        if watcher is not None:
            watcher.stop()
        if agent is not None:
            report.agent_exit = agent.stop()
        report.seconds = time.monotonic() - started
        if keep is None:
            shutil.rmtree(out, ignore_errors=True)
    return report


class _Killer:
    """The kill drill's tick: ``kill -9`` the worker once it is busy with a job for a moment."""

    def __init__(self, agent: AgentProcess, report: DrillReport) -> None:
        self.agent = agent
        self.report = report
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        for w in self.agent.status()["workers"]:
            if w["state"] == "busy" and w["pid"] and (w["job_elapsed_s"] or 0) >= KILL_AFTER_S:
                os.kill(w["pid"], signal.SIGKILL)
                self.done = True
                self.report.figures.update(killed_pid=w["pid"], killed_job=w["current_job"],
                                           killed_at=time.time(), killed_job_elapsed_s=w["job_elapsed_s"])
                return
