"""Logs and failure capture against a real ``zitops agent`` with the fault engine.

Two agents (real CLI process, real spawned workers, real uvicorn on loopback):

- ``errors``: engine error on job 1, out-of-memory on a single image (job 2),
  crash on job 3; then checks of the JSON format, tiers, runtime level
  changes (API and SIGHUP) and ``zitops failures``.
- ``lost``: a hang on job 1 (job timeout).
- ``killed``: ``kill -9`` of the worker while a hang holds it inside a job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from zitops.config import config_from_mapping, config_to_dict
from zitops.profile import load_profile

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

FAST = [
    "generation.width=64", "generation.height=64", "generation.steps=2",
    "watchdog.interval_s=0.5", "watchdog.heartbeat_interval_s=0.2", "watchdog.heartbeat_timeout_s=10",
    "watchdog.kill_grace_s=0.5", "watchdog.restart_backoff_s=0.2", "watchdog.restart_backoff_max_s=1",
    "queue.drain_timeout_s=10",
]


CLI = "from zitops.cli import main; main()"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until truthy, or fail naming what we waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Agent:
    """A running agent process and where it writes."""

    proc: subprocess.Popen[bytes]
    url: str
    root: Path
    config_path: Path

    @property
    def log_dir(self) -> Path:
        return self.root / "log_dir"

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def submit(self, **body: Any) -> str:
        r = httpx.post(self.url + "/v1/jobs", json={"prompt": "a fox", **body}, timeout=10)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.get(f"/v1/jobs/{job_id}").json())

    def wait_final(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        return dict(wait_for(final, timeout, f"job {job_id} to finish"))

    def lines(self, name: str = "zitops.log") -> list[dict[str, Any]]:
        path = self.log_dir / name
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text("utf-8").splitlines() if x.strip()]

    def failures(self) -> list[dict[str, Any]]:
        return self.lines("failures.jsonl")


def _start(root: Path, faults: dict[str, Any], sets: list[str]) -> Iterator[Agent]:
    root.mkdir(parents=True, exist_ok=True)
    profile = load_profile("designer", FAST + sets)
    port = _free_port()
    cfg = config_from_mapping({
        "profile": profile.model_dump(mode="json"),
        "port": port,
        "gpus": [],
        "paths": {k: str(root / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
        "engine": {"kind": "faulty", "faults": {"inner": "synthetic", "job_seconds": 0.05, **faults}},
        "log_format": "json",
    })
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config_to_dict(cfg)), "utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    with (root / "agent.out").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", CLI, "agent", "--config", str(config_path)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    agent = Agent(proc, f"http://127.0.0.1:{port}", root, config_path)
    try:
        def ready() -> bool:
            assert proc.poll() is None, (root / "agent.out").read_text("utf-8", "replace")
            try:
                return agent.get("/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, "the agent to be ready")
        yield agent
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Workers share the agent's session; none may outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def errors_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    yield from _start(tmp_path_factory.mktemp("errors"),
                      {"raise_on_job": 1, "oom_above_batch": 0, "crash_on_job": 3}, [])


@pytest.fixture(scope="module")
def lost_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    yield from _start(tmp_path_factory.mktemp("lost"), {"hang_on_job": 1}, ["queue.job_timeout_s=4"])


@pytest.fixture(scope="module")
def killed_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    # The hang holds the first job inside the engine until the test kills the worker.
    yield from _start(tmp_path_factory.mktemp("killed"), {"hang_on_job": 1}, [])


@pytest.fixture(scope="module")
def error_jobs(errors_agent: Agent) -> dict[str, dict[str, Any]]:
    """Engine error, single-image OOM and crash, one job each, all final."""
    prompt = "一只在雪地里奔跑的红狐狸, cinematic light, very long prompt " * 3
    ids = {}
    for name in ("engine_error", "oom", "crash"):
        ids[name] = errors_agent.submit(prompt=prompt)
        errors_agent.wait_final(ids[name])
    return {name: errors_agent.job(job_id) for name, job_id in ids.items()}


def _records_for(agent: Agent, job_id: str) -> list[dict[str, Any]]:
    return [r for r in agent.failures() if r["job_id"] == job_id]


def test_engine_error_oom_and_crash_each_leave_a_record(errors_agent: Agent, error_jobs: dict[str, Any]) -> None:
    assert error_jobs["engine_error"]["status"] == "failed"
    assert error_jobs["oom"]["status"] == "failed"
    assert error_jobs["crash"]["status"] == "succeeded", "a crashed job is requeued once and then succeeds"

    (err,) = _records_for(errors_agent, error_jobs["engine_error"]["id"])
    assert (err["kind"], err["exc_type"], err["action"]) == ("job", "EngineError", "fail")
    assert "injected failure" in err["message"] and "Traceback" in err["traceback"]
    assert err["prompt"] == ("一只在雪地里奔跑的红狐狸, cinematic light, very long prompt " * 3)[:50]
    assert err["params"]["width"] == 64 and err["params"]["steps"] == 2
    assert err["worker_id"] and err["vram"]["simulated"] is True and err["vram"]["allocated_mib"] > 0
    assert err["profile"] == "designer" and err["time"].endswith("Z")

    (oom,) = _records_for(errors_agent, error_jobs["oom"]["id"])
    assert (oom["kind"], oom["exc_type"], oom["action"]) == ("oom", "OutOfMemory", "fail")

    crash = _records_for(errors_agent, error_jobs["crash"]["id"])
    assert [(r["kind"], r["action"]) for r in crash] == [("crash", "requeue")]
    assert crash[0]["worker_id"] and crash[0]["prompt"]

    # The same records are in SQLite: /status shows the last few from there.
    recent = errors_agent.get("/status").json()["recent_failures"]
    assert {r["id"] for r in recent} >= {err["id"], oom["id"], crash[0]["id"]}


def test_log_files_are_json_lines_at_the_configured_tiers(errors_agent: Agent, error_jobs: dict[str, Any]) -> None:
    lines = errors_agent.lines()
    assert lines, "the agent wrote no log"
    for line in lines:
        for key in ("timestamp", "level", "event", "logger", "process"):
            assert key in line, f"{key} missing from {line}"
        assert line["process"] == "agent"
        if line["logger"].startswith("zitops"):
            assert line["level"] != "debug"
        else:  # root WARNING, libraries ERROR
            assert line["level"] in ("warning", "error", "critical"), line
    job_id = error_jobs["oom"]["id"]
    about_job = [ln for ln in lines if ln.get("job_id") == job_id]
    assert any(ln["logger"] == "zitops.failures" and ln["level"] == "error" for ln in about_job)
    assert any(ln.get("request_id") for ln in lines), "the submit path carries the request id"
    assert not any(ln["event"] == "http_request" for ln in lines), "access lines belong in access.log"

    worker_logs = sorted(errors_agent.log_dir.glob("worker-*.log"))
    assert worker_logs, "workers log through the same configuration, to their own files"
    for path in worker_logs:
        wlines = errors_agent.lines(path.name)
        assert all(ln["process"].startswith("worker-") for ln in wlines)
        assert any(ln.get("job_id") for ln in wlines)

    access = errors_agent.lines("access.log")
    assert any(ln["method"] == "POST" and ln["path"] == "/v1/jobs" and ln["status"] == 202 for ln in access)


def _agent_lines(agent: Agent, job_id: str, event: str) -> list[dict[str, Any]]:
    return [ln for ln in agent.lines() if ln.get("job_id") == job_id and ln["event"] == event]


def _worker_lines(agent: Agent, job_id: str, event: str) -> list[dict[str, Any]]:
    return [ln for p in agent.log_dir.glob("worker-*.log") for ln in agent.lines(p.name)
            if ln.get("job_id") == job_id and ln["event"] == event]


def _count(agent: Agent, event: str) -> int:
    return sum(1 for ln in agent.lines() if ln["event"] == event)


def _a_job_whose_worker(agent: Agent, logs_its_start: bool, what: str) -> str:
    """Run jobs until one's "job started" line is (or is not) in the worker's log; that job's id.

    The worker logs "job started" before it runs the job, and a file handler flushes each line,
    so once the job is final its line is on disk or was never written: absence is a fact here,
    not a guess after a sleep. Workers follow the agent's tiers through a polled file, so the
    first jobs after a change may still run at the old tier.
    """
    def attempt() -> str | None:
        job_id = agent.submit()
        assert agent.wait_final(job_id)["status"] == "succeeded"
        return job_id if bool(_worker_lines(agent, job_id, "job started")) == logs_its_start else None

    found: str = wait_for(attempt, 30, what)
    return found


def test_levels_change_at_runtime_via_api_and_sighup(errors_agent: Agent, error_jobs: dict[str, Any]) -> None:
    levels = {"zitops.agent": "WARNING", "zitops.worker": "WARNING"}
    r = httpx.put(errors_agent.url + "/admin/log-levels", json={"levels": levels}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["levels"]["zitops.agent"] == "WARNING"
    quiet = _a_job_whose_worker(errors_agent, False, "the worker to follow the WARNING tier")
    # The agent applied the change before answering the PUT, and it logs "job succeeded" in the
    # same loop callback that makes the job final: no line means the tier held it back.
    assert not _agent_lines(errors_agent, quiet, "job succeeded"), "INFO lines must stop at the WARNING tier"

    bad = httpx.put(errors_agent.url + "/admin/log-levels", json={"levels": {"zitops": "LOUD"}}, timeout=10)
    assert bad.status_code == 422 and "LOUD" in bad.text

    errors_agent.proc.send_signal(signal.SIGHUP)  # back to the config's tiers
    wait_for(lambda: _count(errors_agent, "log levels reloaded") >= 1, 10, "the SIGHUP reload")
    loud = _a_job_whose_worker(errors_agent, True, "worker INFO lines after SIGHUP")
    assert _agent_lines(errors_agent, loud, "job succeeded"), "INFO lines are back after SIGHUP"


def test_zitops_failures_reads_the_store(errors_agent: Agent, error_jobs: dict[str, Any]) -> None:
    cmd = [sys.executable, "-c", CLI, "failures", "--config",
           str(errors_agent.config_path)]
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert table[0].startswith("TIME")
    body = "\n".join(table[1:])
    for kind in ("job", "oom", "crash"):
        assert f" {kind} " in body
    as_json = subprocess.run([*cmd, "--json", "--since", "1h"], capture_output=True, text=True, timeout=60,
                             check=True).stdout.splitlines()
    got = [json.loads(x) for x in as_json]
    assert {r["job_id"] for r in got} >= {j["id"] for j in error_jobs.values()}
    assert got == sorted(got, key=lambda r: r["ts"], reverse=True)


def test_zitops_failures_from_a_running_agent(errors_agent: Agent, error_jobs: dict[str, Any]) -> None:
    base = [sys.executable, "-c", CLI, "failures", "--json", "--limit", "2"]
    via_url = subprocess.run([*base, "--url", errors_agent.url, "--since", "1h"], capture_output=True, text=True,
                             timeout=60, check=True).stdout.splitlines()
    via_files = subprocess.run([*base, "--config", str(errors_agent.config_path)], capture_output=True, text=True,
                               timeout=60, check=True).stdout.splitlines()
    assert len(via_url) == 2
    assert [json.loads(x) for x in via_url] == [json.loads(x) for x in via_files]
    bad = httpx.get(errors_agent.url + "/v1/failures", params={"since": "soonish"}, timeout=10)
    assert bad.status_code == 422 and "30m, 1h" in bad.text


def test_hang_leaves_a_record(lost_agent: Agent) -> None:
    hung = lost_agent.submit()
    # Killed for passing its timeout: failed, not run again (a job that hangs once hangs again).
    final = lost_agent.wait_final(hung, timeout=40)
    assert final["status"] == "failed" and "killed for passing its timeout, not retried" in final["error"]
    (rec,) = _records_for(lost_agent, hung)
    assert (rec["kind"], rec["action"], rec["exc_type"]) == ("hang", "fail", "WorkerLost")


def test_kill_9_mid_job_leaves_a_record(killed_agent: Agent) -> None:
    victim = killed_agent.submit()
    # Inside the job for certain: the fault engine logs the hang with the job's id, then never returns.
    (line,) = wait_for(lambda: [ln for ln in _worker_lines(killed_agent, victim, "fault: hanging on job 1")], 30,
                       "the worker to hang in the job")
    pid = int(line["pid"])
    assert [w["pid"] for w in killed_agent.get("/status").json()["workers"]] == [pid]
    os.kill(pid, signal.SIGKILL)
    assert killed_agent.wait_final(victim, timeout=40)["status"] == "succeeded"
    (rec,) = _records_for(killed_agent, victim)
    assert (rec["kind"], rec["action"]) == ("killed", "requeue")
    assert rec["worker_id"] and "killed by" in rec["message"]
