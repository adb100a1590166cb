"""The drill's disposable agent: a rendered loopback deployment, the agent subprocess, a /readyz watcher.

:class:`AgentProcess` and :func:`build_deployment` are reused by ``benchmarks/soak.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from zitops.config import AgentConfig, config_from_mapping, config_to_dict
from zitops.errors import AgentUnavailable

POLL_S = 0.05
AGENT_CLI = "import sys; from zitops.cli import main; sys.exit(main())"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_deployment(out: Path, port: int, faults: dict[str, Any], sets: tuple[str, ...] = (),
                     profile: str = "designer") -> tuple[Path, AgentConfig]:
    """Render a loopback deployment into ``out`` with the fault engine; (config.yaml, config)."""
    from zitops.deployment.deploy import DeployRequest, plan

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
        self.started = 0.0
        """When polling began (wall clock): the drill's events from here on are its own."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill-readyz", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self.started = time.time()
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
