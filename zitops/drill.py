"""Fault drills: break a disposable local agent on purpose and time its recovery.

A drill renders a throwaway deployment (``zitops.deploy.plan`` with the
fault-injecting engine and short watchdog thresholds), starts a real ``zitops
agent`` subprocess on 127.0.0.1, submits a bounded number of jobs through the
native HTTP API while watching /readyz, /status and /metrics, and then checks
its expectations: the fault was detected, the worker came back, and every
accepted job succeeded (jobs lost = 0). The agent is always torn down
(SIGTERM, then SIGKILL of its process group) and the directory removed unless
kept. :class:`AgentProcess` and :func:`build_deployment` are reused by
``benchmarks/soak.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zitops.config import AgentConfig, config_from_mapping, config_to_dict
from zitops.errors import AgentUnavailable, InvalidRequest, ZitopsError

KINDS = ("leak", "crash", "hang", "oom", "kill")
"""The drills ``zitops drill KIND`` knows."""

DEFAULT_JOBS = {"leak": 8, "crash": 6, "hang": 4, "oom": 4, "kill": 3}
MAX_JOBS = 200
WINDOW = 8  # jobs in flight at once; below the queue cap so a submit is never refused
POLL_S = 0.05
AGENT_CLI = "import sys; from zitops.cli import main; sys.exit(main())"

# Short thresholds so each drill takes seconds, not minutes.
FAST_SETS = (
    "generation.width=64", "generation.height=64", "generation.steps=2",
    "watchdog.interval_s=0.5", "watchdog.heartbeat_interval_s=0.2", "watchdog.heartbeat_timeout_s=5",
    "watchdog.kill_grace_s=1", "watchdog.restart_backoff_s=0.2", "watchdog.restart_backoff_max_s=1",
    "queue.job_timeout_s=20", "queue.drain_timeout_s=10",
)
LEAK_MIB, LEAK_THRESHOLD_MIB, LEAK_JOBS = 100.0, 150, 2
CRASH_ON_JOB, HANG_ON_JOB, HANG_TIMEOUT_S = 3, 2, 2.0
OOM_ABOVE_BATCH, OOM_BATCH = 1, 4
KILL_JOB_SECONDS, KILL_AFTER_S = 1.5, 0.3


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


# --- the disposable deployment and the agent process ------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_deployment(out: Path, port: int, faults: dict[str, Any], sets: tuple[str, ...] = (),
                     profile: str = "designer") -> tuple[Path, AgentConfig]:
    """Render a loopback deployment into ``out`` with the fault engine; (config.yaml, config)."""
    from zitops.deploy import DeployRequest, plan

    p = plan(DeployRequest(profile=profile, targets=(), out=out, port=port, host="127.0.0.1",
                           gpus="auto", overrides=tuple(sets), zitops_bin=sys.executable))
    data = config_to_dict(p.config)
    # `deploy --set engine.*` reaches the profile's engine section, so the fault
    # engine is selected here, on the rendered config, and validated again.
    data["engine"] = {"kind": "faulty", "faults": {"inner": "synthetic", **faults}}
    data["log_format"] = "json"
    config = config_from_mapping(data, "drill config")
    for d in p.runtime_dirs:
        d.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text("# zitops drill: a disposable deployment with the fault-injecting engine\n"
                    + yaml.safe_dump(config_to_dict(config), sort_keys=False), "utf-8")
    return path, config


class AgentProcess:
    """One ``zitops agent --config`` subprocess in its own session, and an HTTP client for it."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        import httpx

        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = log_path.open("ab")
        # A new session makes the agent a process-group leader, so teardown
        # reaches its spawned workers too.
        self.proc = subprocess.Popen([sys.executable, "-c", AGENT_CLI, "agent", "--config", str(config_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=10.0)

    @property
    def pid(self) -> int:
        """The agent's process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the agent process runs."""
        return self.proc.poll() is None

    def wait_ready(self, timeout_s: float) -> float:
        """Block until /readyz is 200; the seconds it took. AgentUnavailable on exit or timeout."""
        import httpx

        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if not self.alive():
                raise AgentUnavailable(f"the drill agent exited with code {self.proc.returncode} before it "
                                       f"was ready; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/readyz").status_code == 200:
                    return time.monotonic() - start
            time.sleep(0.1)
        raise AgentUnavailable(f"the drill agent was not ready within {timeout_s:g} s; see {self.log_path}")

    def get(self, path: str) -> Any:
        """GET a JSON document."""
        return self.client.get(path).json()

    def status(self) -> dict[str, Any]:
        """GET /status."""
        return dict(self.get("/status"))

    def submit(self, body: dict[str, Any]) -> tuple[int, Any, float | None]:
        """POST /v1/jobs: (HTTP status, JSON body, Retry-After seconds or None)."""
        r = self.client.post("/v1/jobs", json=body)
        retry = r.headers.get("Retry-After")
        try:
            data = r.json()
        except ValueError:
            data = r.text
        return r.status_code, data, float(retry) if retry and retry.isdigit() else None

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}."""
        return dict(self.get(f"/v1/jobs/{job_id}"))

    def metrics(self) -> dict[str, float]:
        """The runtime's counters from /metrics: ``name{labels}`` -> value (recoveries, restarts, jobs)."""
        text = self.client.get("/metrics").text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(("zitops_recoveries_total", "zitops_worker_restarts_total", "zitops_jobs_total")):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the agent drains), then SIGKILL its whole process group; the exit code."""
        with contextlib.suppress(Exception):
            self.client.close()
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout_s)
        # Workers are in the agent's group; anything left (a hung worker, or an
        # agent that ignored SIGTERM) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class ReadyzWatcher:
    """Polls /readyz in a thread and keeps each change of readiness, with its time and reasons."""

    def __init__(self, url: str, interval_s: float = POLL_S) -> None:
        self.url = url
        self.interval_s = interval_s
        self.changes: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill-readyz", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and join the thread."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import httpx

        last: bool | None = None
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while not self._stop.is_set():
                try:
                    r = client.get("/readyz")
                    ready, reasons = r.status_code == 200, list(r.json().get("reasons", []))
                except (httpx.HTTPError, ValueError):
                    ready, reasons = False, ["no answer"]
                if ready != last:
                    self.changes.append({"time": time.time(), "ready": ready, "reasons": reasons})
                    last = ready
                self._stop.wait(self.interval_s)

    def down_spells(self) -> list[float]:
        """The length of each spell of not-ready after the first ready, in seconds."""
        spells: list[float] = []
        seen_ready, down_at = False, None
        for c in self.changes:
            if c["ready"]:
                if seen_ready and down_at is not None:
                    spells.append(c["time"] - down_at)
                seen_ready, down_at = True, None
            elif seen_ready and down_at is None:
                down_at = c["time"]
        return spells


# --- a drill's plan and its report ---------------------------------------------------------


@dataclass(frozen=True)
class DrillPlan:
    """What one kind injects, and the jobs it submits."""

    kind: str
    faults: dict[str, Any]
    sets: tuple[str, ...]
    bodies: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Check:
    """One expectation and whether it held."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class DrillReport:
    """What happened in a drill: figures, checks, jobs, events; ``ok`` when every check held."""

    kind: str
    directory: str
    kept: bool
    url: str = ""
    agent_pid: int | None = None
    agent_exit: int | None = None
    worker_pids: list[int] = field(default_factory=list)
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    jobs: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    readyz: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the drill ran and every expectation held."""
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record an expectation."""
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {
            "kind": self.kind, "ok": self.ok, "error": self.error, "seconds": round(self.seconds, 2),
            "directory": self.directory, "kept": self.kept, "url": self.url, "agent_pid": self.agent_pid,
            "agent_exit": self.agent_exit, "worker_pids": self.worker_pids, "figures": self.figures,
            "jobs": self.jobs, "checks": [c.__dict__ for c in self.checks], "events": self.events,
            "readyz": self.readyz, "metrics": self.metrics,
        }


def plan_drill(kind: str, jobs: int | None = None) -> DrillPlan:
    """The faults, thresholds and job bodies of drill ``kind`` (InvalidRequest for an unknown one)."""
    if kind not in KINDS:
        raise InvalidRequest(f"drill: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    n = DEFAULT_JOBS[kind] if jobs is None else jobs
    if not 1 <= n <= MAX_JOBS:
        raise InvalidRequest(f"--jobs {n}: give 1..{MAX_JOBS}")
    body: dict[str, Any] = {"prompt": f"drill {kind}", "width": 64, "height": 64, "steps": 2}
    bodies = [dict(body, seed=i) for i in range(n)]
    sets: tuple[str, ...] = FAST_SETS
    faults: dict[str, Any] = {"job_seconds": 0.05}
    if kind == "leak":
        faults["leak_mib_per_job"] = LEAK_MIB
        sets += (f"watchdog.leak_threshold_mib={LEAK_THRESHOLD_MIB}", f"watchdog.leak_consecutive_jobs={LEAK_JOBS}")
    elif kind == "crash":
        faults["crash_on_job"] = min(CRASH_ON_JOB, n)
    elif kind == "hang":
        faults["hang_on_job"] = min(HANG_ON_JOB, n)
        sets += (f"queue.job_timeout_s={HANG_TIMEOUT_S:g}",)
    elif kind == "oom":
        faults["oom_above_batch"] = OOM_ABOVE_BATCH
        # Every other job is a batch above the limit: it must be split and succeed.
        bodies = [dict(b, batch=OOM_BATCH if i % 2 == 0 else 1) for i, b in enumerate(bodies)]
    else:  # kill: jobs long enough to be killed mid-way
        faults["job_seconds"] = KILL_JOB_SECONDS
    return DrillPlan(kind, faults, sets, tuple(bodies))


# --- running it ------------------------------------------------------------------------------


@dataclass
class _Jobs:
    """Accepted jobs and their final states."""

    accepted: list[str] = field(default_factory=list)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    batch: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> list[str]:
        """Accepted jobs not final yet."""
        return [j for j in self.accepted if j not in self.final]


def _run_jobs(agent: AgentProcess, bodies: tuple[dict[str, Any], ...], deadline: float,
              tick: Callable[[], None] | None = None) -> _Jobs:
    """Submit every body with at most WINDOW in flight, polling until all are final or the deadline."""
    jobs = _Jobs()
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


def run_drill(kind: str, jobs: int | None = None, keep: Path | None = None, timeout_s: float = 120.0) -> DrillReport:
    """Run drill ``kind`` end to end and return its report (the agent is always torn down)."""
    plan = plan_drill(kind, jobs)
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
        config_path, config = build_deployment(out, port, plan.faults, plan.sets)
        with _spawning():
            agent = AgentProcess(config_path, port, out / "agent.out")
        report.url, report.agent_pid = agent.url, agent.pid
        report.figures["agent_start_to_ready_s"] = round(agent.wait_ready(60.0), 2)
        watcher = ReadyzWatcher(agent.url)
        watcher.start()
        before = agent.status()
        report.worker_pids = [w["pid"] for w in before["workers"] if w["pid"]]
        deadline = started + timeout_s
        kill = _Killer(agent, report) if kind == "kill" else None
        done = _run_jobs(agent, plan.bodies, deadline, kill)
        after = _wait_recovered(agent, min(deadline, time.monotonic() + 15.0))
        watcher.stop()
        report.worker_pids += [w["pid"] for w in after["workers"] if w["pid"] and w["pid"] not in report.worker_pids]
        report.events = [e for e in after.get("recoveries", []) if e["kind"] != "nvml"]
        report.readyz = watcher.changes
        report.metrics = agent.metrics()
        _judge(report, plan, done, before, after, config, watcher)
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


def _judge(report: DrillReport, plan: DrillPlan, done: _Jobs, before: dict[str, Any], after: dict[str, Any],
           config: AgentConfig, watcher: ReadyzWatcher) -> None:
    """Turn what was observed into figures and checks."""
    succeeded = [j for j, r in done.final.items() if r["status"] == "succeeded"]
    failed = {j: r.get("error") for j, r in done.final.items() if r["status"] != "succeeded"}
    lost = len(done.accepted) - len(succeeded)
    report.jobs = {"submitted": len(plan.bodies), "accepted": len(done.accepted), "succeeded": len(succeeded),
                   "failed": failed, "not_final": done.pending, "refused": done.refused, "lost": lost,
                   "retried": sorted(j for j, r in done.final.items() if r.get("attempts", 0) > 1)}
    report.figures["jobs_lost"] = lost
    report.check("every job was accepted", not done.refused and len(done.accepted) == len(plan.bodies),
                 "; ".join(done.refused))
    report.check("jobs lost = 0 (every accepted job succeeded)", lost == 0,
                 f"{len(failed)} failed, {len(done.pending)} never finished" if lost else "")
    w_after = after["workers"]
    report.check("a worker is ready at the end", bool(after.get("ready"))
                 and any(w["state"] == "ready" for w in w_after), "; ".join(after.get("reasons", [])))
    spells = watcher.down_spells()
    report.figures["readyz_down_s"] = [round(s, 2) for s in spells]
    events, m = report.events, report.metrics
    t0 = min((c["time"] for c in watcher.changes), default=0.0)
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
    elif plan.kind == "leak":
        recycle = _after(events, "recycle", t0)
        # By default the successor warms while the old worker serves (a "handover",
        # then the old one is "retired"); with watchdog.overlap_recycle off it is
        # stop ("restart"), then start ("ready").
        overlapped = bool(recycle and recycle.get("overlap"))
        ready_kind, exit_kind = ("handover", "retired") if overlapped else ("ready", "restart")
        ready = _after(events, ready_kind, recycle["time"], recycle["worker"]) if recycle else None
        bound = LEAK_JOBS + math.ceil(LEAK_THRESHOLD_MIB / LEAK_MIB) + 1
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
        if kill and ready:
            report.figures["hang_timeout_s"] = config.profile.queue.job_timeout_s
            ran = re.search(r"job ran ([0-9.]+)s", kill["reason"])
            report.figures["hang_detected_at_job_age_s"] = float(ran.group(1)) if ran else None
            report.figures["hang_detected_to_replaced_s"] = ready.get("recovery_s")
            job = kill.get("job_id")
            report.check("the hung job was requeued and succeeded",
                         job in done.final and done.final[job]["status"] == "succeeded", f"job {job}")
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


# --- text output ---------------------------------------------------------------------------------


def format_report(report: DrillReport) -> list[str]:
    """The human-readable report, one line per item."""
    r = report
    lines = [f"drill {r.kind}: {'PASS' if r.ok else 'FAIL'} in {r.seconds:.1f} s"]
    where = "kept" if r.kept else "removed"
    lines.append(f"  deployment  {r.directory} ({where})")
    if r.url:
        lines.append(f"  agent       pid {r.agent_pid} at {r.url}, exit {r.agent_exit}; "
                     f"worker pids {', '.join(map(str, r.worker_pids)) or '-'}")
    if r.error:
        lines.append(f"  error       {r.error}")
    if r.jobs:
        j = r.jobs
        lines.append(f"  jobs        {j['accepted']} accepted, {j['succeeded']} succeeded, {len(j['failed'])} failed, "
                     f"{len(j['retried'])} retried, {j['lost']} lost")
        for job_id, err in j["failed"].items():
            lines.append(f"    failed {job_id}: {err}")
    for key, value in r.figures.items():
        lines.append(f"  {key:<30} {value}")
    if r.events:
        lines.append("  events (from /status):")
        t0 = r.events[0]["time"]
        for e in r.events:
            extra = ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("time", "kind", "worker", "incarnation",
                                                                            "reason"))
            lines.append(f"    +{e['time'] - t0:6.2f}s {e['kind']:<9} {e.get('worker') or '-'}#{e.get('incarnation')} "
                         f"{e['reason']}{' (' + extra + ')' if extra else ''}")
    downs = [c for c in r.readyz if not c["ready"]]
    if downs:
        lines.append("  /readyz 503 spells (reasons):")
        for down in downs:
            lines.append(f"    {'; '.join(down['reasons']) or '-'}")
    if r.checks:
        lines.append("  checks:")
        for c in r.checks:
            lines.append(f"    {'ok  ' if c.ok else 'FAIL'} {c.name}{': ' + c.detail if c.detail and not c.ok else ''}")
    return lines
