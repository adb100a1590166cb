"""A real ``zitops agent`` for the attack tests: its own process group, loopback only, cleaned up.

Tokens: ADMIN is an ``admin:`` line, ALICE and BOB are tenants.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from api_support import free_port  # noqa: E402

from zitops.config import config_from_mapping, config_to_dict  # noqa: E402
from zitops.profile import load_profile  # noqa: E402

ADMIN = "admin-token-0123456789abcdef"
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"
SETS = ["generation.width=64", "generation.height=64", "generation.steps=2", "queue.depth=4",
        "queue.job_timeout_s=30", "queue.drain_timeout_s=5", "watchdog.heartbeat_interval_s=0.5",
        "watchdog.standby_worker=false"]
CLI = "from zitops.cli import main; main()"


def auth(token: str) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


def write_tokens(path: Path, text: str, mode: int = 0o600) -> Path:
    """A tokens file with ``text`` and ``mode``."""
    path.write_text(text)
    os.chmod(path, mode)
    return path


class Agent:
    """``zitops agent --config`` in a new session (so teardown reaches its workers), umask 022."""

    def __init__(self, tmp: Path, *, tokens: bool = True, sets: list[str] | None = None,
                 job_seconds: float = 0.05, extra: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data: dict[str, Any] = {
            "profile": load_profile("designer", SETS + list(sets or [])).model_dump(mode="json"),
            "port": self.port,
            "paths": {k: str(tmp / "run" / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
            "engine": {"kind": "faulty", "faults": {"inner": "synthetic", "job_seconds": job_seconds}},
            "log_format": "json",
            **(extra or {}),
        }
        if tokens:
            tf = write_tokens(tmp / "tokens", f"# adversarial\nadmin:{ADMIN}\n{ALICE}\n{BOB}\n")
            data["auth"] = {"tokens_file": str(tf)}
        self.config = config_from_mapping(data)
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config_to_dict(self.config)))
        self.out_path = tmp / "agent.out"
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop()
        # umask 022, as when started by hand: the agent must set its own.
        self.proc = subprocess.Popen([sys.executable, "-c", CLI, "agent", "--config", str(self.config_path)],
                                     stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=lambda: os.umask(0o022))
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def output(self) -> str:
        """What the agent printed so far."""
        return self.out_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 120) -> Agent:
        """Poll the open /readyz until 200; fail with the agent's output otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/readyz").status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise AssertionError("agent never became ready:\n" + self.output()[-4000:])

    def wait_job(self, job_id: str, token: str, timeout_s: float = 60) -> dict[str, Any]:
        """Poll a job until it is final; its JSON."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            data: dict[str, Any] = self.client.get(f"/v1/jobs/{job_id}", headers=auth(token)).json()
            if data.get("status") in ("succeeded", "failed", "cancelled"):
                return data
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL the whole process group."""
        with contextlib.suppress(Exception):
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._out.close()


def wait_for(predicate: Any, timeout_s: float, what: str, agent: Agent | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` (and the agent's output)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            value = predicate()
            if value:
                return value
        time.sleep(0.1)
    tail = ("\n" + agent.output()[-3000:]) if agent is not None else ""
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}{tail}")


def status(agent: Agent) -> dict[str, Any]:
    """The admin /status JSON."""
    data: dict[str, Any] = agent.client.get("/status", headers=auth(ADMIN)).json()
    return data


def events(agent: Agent, kind: str) -> list[dict[str, Any]]:
    """The pool's recorded recovery events of ``kind``."""
    return [e for e in status(agent).get("recoveries") or [] if e.get("kind") == kind]
