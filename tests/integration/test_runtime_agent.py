"""The real ``zitops agent --config`` process: HTTP end to end, kill -9 and restart, SIGTERM drain."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.runtime_support import runtime_config, wait_until
from zitops.agent.contract import JobStatus
from zitops.agent.storage.jobs import JobStore
from zitops.config import config_to_dict

pytestmark = pytest.mark.slow
CLI = "import sys; from zitops.cli import main; sys.exit(main())"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(tmp: Path, **kw: Any) -> tuple[Path, str]:
    port = _free_port()
    cfg = runtime_config(tmp, port=port, **kw)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return path, f"http://127.0.0.1:{port}"


class Agent:
    """One ``zitops agent`` process in its own session (so cleanup can reach its workers)."""

    def __init__(self, config: Path, url: str, log: Path) -> None:
        self.url = url
        self._log = log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-c", CLI, "agent", "--config", str(config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=url, timeout=10)

    def get(self, path: str) -> httpx.Response:
        """GET, retrying while the port is not open yet."""
        return self.client.get(path)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /readyz says 200."""
        def ready() -> bool:
            assert self.proc.poll() is None, f"agent exited with {self.proc.returncode}"
            with contextlib.suppress(httpx.HTTPError):
                return self.get("/readyz").status_code == 200
            return False
        wait_until(ready, timeout, interval=0.1, what="agent readiness")

    def submit(self, **body: Any) -> str:
        """POST /v1/jobs; the job id."""
        r = self.client.post("/v1/jobs", json={"prompt": "a lighthouse", "width": 64, "height": 64,
                                               "steps": 2, **body})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}."""
        r = self.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def worker_pids(self) -> list[int]:
        """The worker pids from /status."""
        return [w["pid"] for w in self.get("/status").json()["workers"] if w["pid"]]

    def close(self) -> None:
        """Kill what is left of the agent's session."""
        self.client.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # orphaned workers, if any survived
        self._log.close()


@contextlib.contextmanager
def agent(config: Path, url: str, tmp: Path) -> Iterator[Agent]:
    a = Agent(config, url, tmp / "agent.out")
    try:
        yield a
    finally:
        a.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of a dead agent is reaped by init; treat it as gone.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


def test_tiny_diffusers_end_to_end_sighup_and_sigterm(tmp_path: Path) -> None:
    config, url = _write_config(tmp_path, kind="diffusers")
    with agent(config, url, tmp_path) as a:
        a.wait_ready(120)
        job_id = a.submit(seed=5)
        wait_until(lambda: a.job(job_id)["status"] == "succeeded", 60, what="the job")
        img = a.get(f"/v1/jobs/{job_id}/images/0")
        assert img.status_code == 200 and img.content[:8] == b"\x89PNG\r\n\x1a\n"
        status = a.get("/status").json()
        assert status["engine"] == "diffusers" and status["workers"][0]["jobs_done"] == 1
        # The worker ran torch and talked to the agent; the agent itself must
        # still not have loaded it (a library type unpickled from the pipe would).
        maps = Path(f"/proc/{a.proc.pid}/maps").read_text()
        assert "libtorch" not in maps, "the agent process loaded torch"
        data = yaml.safe_load(config.read_text())
        data["profile"]["logging"]["levels"]["diffusers"] = "DEBUG"
        config.write_text(yaml.safe_dump(data))
        worker_pids = a.worker_pids()
        a.proc.send_signal(signal.SIGHUP)  # re-reads log tiers; the agent keeps serving
        for pid in worker_pids:  # as `systemctl kill -s HUP` would: workers must survive it
            os.kill(pid, signal.SIGHUP)
        log = tmp_path / "log_dir" / "zitops.log"
        wait_until(lambda: '"diffusers": "DEBUG"' in log.read_text(), 10, what="the SIGHUP reload")
        assert a.worker_pids() == worker_pids and all(_alive(p) for p in worker_pids)
        assert a.get("/readyz").status_code == 200
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(30) == 0


def _succeeded(a: Agent, job_id: str) -> bool:
    return a.job(job_id)["status"] == "succeeded"


# A frozen worker (SIGSTOP) holds the job it was handed: the agent counts the job as running and
# nothing finishes until the test sends SIGCONT, so no race decides what is running when the agent
# is killed or drained. The liveness limit is generous so the pause is not taken for a hang.
FROZEN_SETS = ["watchdog.heartbeat_timeout_s=60"]


def _freeze(a: Agent) -> list[int]:
    pids = a.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def _thaw(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_queued_jobs_survive_kill_9_of_the_agent(tmp_path: Path) -> None:
    config, url = _write_config(tmp_path, kind="faulty", sets=FROZEN_SETS)
    with agent(config, url, tmp_path) as a:
        a.wait_ready()
        pids = _freeze(a)
        try:
            ids = [a.submit(seed=i) for i in range(3)]
            assert [a.job(j)["status"] for j in ids] == ["running", "queued", "queued"]
            os.kill(a.proc.pid, signal.SIGKILL)
            a.proc.wait(10)
        finally:
            _thaw(pids)
        # Orphaned workers notice the agent is gone and exit by themselves.
        wait_until(lambda: not any(_alive(p) for p in pids), 30, what="orphaned workers to exit")
    with agent(config, url, tmp_path) as b:
        b.wait_ready()
        for job_id in ids:
            wait_until(functools.partial(_succeeded, b, job_id), 30, what=f"job {job_id}")
        assert b.job(ids[0])["attempts"] == 2 and b.job(ids[2])["attempts"] == 1


def test_sigterm_drains_in_flight_and_keeps_queued_jobs(tmp_path: Path) -> None:
    config, url = _write_config(tmp_path, kind="faulty", sets=FROZEN_SETS)
    with agent(config, url, tmp_path) as a:
        a.wait_ready()
        pids = _freeze(a)
        try:
            running, waiting = a.submit(seed=1), a.submit(seed=2)
            assert (a.job(running)["status"], a.job(waiting)["status"]) == ("running", "queued")
            a.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: "draining: not accepting new jobs" in a.get("/readyz").json()["reasons"], 10,
                       what="the drain to start")
        finally:
            _thaw(pids)  # the running job finishes now, inside the drain
        assert a.proc.wait(60) == 0
    store = JobStore(tmp_path / "state_dir")
    assert store.get(running).status is JobStatus.SUCCEEDED
    assert store.get(waiting).status is JobStatus.QUEUED  # durable, for the next start
