"""Real ``zitops agent`` processes that share one PostgreSQL job store (fleet mode).

Each agent has its own port, state, log and output directories, and its own
process group, so a test can kill -9 the whole agent (workers included).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from tests.agent_process_support import stop_process_group
from tests.api_support import free_port
from zitops.config import config_from_mapping, config_to_dict
from zitops.profile import load_profile

if TYPE_CHECKING:
    from tests.pg_support import PgDatabase

TOKEN = "fleet-token-0123456789abcdef0123"
SETS = ["generation.width=64", "generation.height=64", "generation.steps=2", "queue.depth=20",
        "queue.job_timeout_s=60", "queue.drain_timeout_s=5", "watchdog.heartbeat_interval_s=0.5"]


def not_ok(r: httpx.Response, ok: int) -> httpx.Response | None:
    """``r`` unless its status is ``ok`` (for poll_until: wait for a refusal and keep it)."""
    return r if r.status_code != ok else None


class FleetAgent:
    """One agent of the fleet: the fault engine's synthetic pixels, the shared store (or SQLite)."""

    def __init__(self, tmp: Path, db: PgDatabase | None, *, tokens: bool = False, job_seconds: float = 0.05,
                 lease_s: float = 30.0, sets: tuple[str, ...] = (), prefix: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, faults: dict[str, Any] | None = None,
                 host: str | None = None, config: dict[str, Any] | None = None) -> None:
        """``prefix``: argv the agent runs under (``ip netns exec NS``); ``env``: added to its environment;
        ``host``: the address it binds (a namespace's veth address, for clients outside it);
        ``faults``: more fault-engine settings (``pixels``: two agents with different looks make different
        bytes for one job; ``crash_on_job``...); ``config``: more config sections (``images``, ``webhooks``)."""
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://{host or '127.0.0.1'}:{self.port}"
        self.agent_id = f"agent-{tmp.name}"
        data: dict[str, Any] = {
            "profile": load_profile("designer", [*SETS, *sets]).model_dump(mode="json"),
            "model": "tiny",
            "port": self.port,
            "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
            "engine": {"kind": "faulty", "faults": {"inner": "synthetic", "job_seconds": job_seconds,
                                                       **(faults or {})}},
            "log_format": "json",
            **(config or {}),
        }
        if host is not None:
            data["host"] = host
        if db is not None:  # None: the agent's own SQLite, to compare against
            data["store"] = {"url": db.url, "password_file": str(db.password_file), "lease_s": lease_s,
                             "agent_id": self.agent_id}
        self.headers: dict[str, str] = {}
        if tokens:
            tf = tmp / "tokens"
            tf.write_text(f"{TOKEN}\n")
            os.chmod(tf, 0o600)
            data["auth"] = {"tokens_file": str(tf)}
            self.headers = {"Authorization": f"Bearer {TOKEN}"}
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config_to_dict(config_from_mapping(data))))
        self._argv = [*prefix, sys.executable, "-c", "from zitops.cli import main; main()", "agent", "--config",
                      str(self.config_path)]
        self._env = {**os.environ, **(env or {})}
        self.out = open(tmp / "agent.out", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = self._spawn()
        self.client = httpx.Client(base_url=self.url, headers=self.headers, timeout=30)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._argv, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=self._env)

    def restart(self) -> None:
        """Start the agent again after :meth:`kill9`: same id, port, directories and config."""
        assert self.proc.poll() is not None, "restart() after kill9()"
        self.proc = self._spawn()

    def output(self) -> str:
        """The agent's stdout and stderr so far (for failure messages)."""
        return (self.tmp / "agent.out").read_text("utf-8", "replace")[-4000:]

    def ready(self) -> bool:
        """True when /readyz answers 200."""
        with contextlib.suppress(httpx.HTTPError):
            return self.client.get("/readyz").status_code == 200
        return False

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Poll /readyz until 200; fail with the agent's output otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"agent {self.agent_id} never became ready:\n{self.output()}")

    def submit(self, **body: Any) -> str:
        """POST /v1/jobs; the job id."""
        r = self.client.post("/v1/jobs", json={"prompt": "a fox", **body})
        assert r.status_code == 202, r.text
        job_id: str = r.json()["id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}."""
        r = self.client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def log_lines(self, message: str) -> list[dict[str, Any]]:
        """The agent's JSON log records whose event is ``message``."""
        path = self.tmp / "log_dir" / "zitops.log"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text("utf-8", "replace").splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("event") == message:
                    out.append(rec)
        return out

    def kill9(self) -> None:
        """SIGKILL the agent's whole process group (agent and workers): a host gone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL the whole process group if it lingers."""
        stop_process_group(self.proc)
        self.client.close()
        self.out.close()
