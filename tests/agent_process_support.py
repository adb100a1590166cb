"""A real ``zitops agent`` subprocess on a free loopback port: config written, started, polled ready, stopped.

Shared by the integration tests that drive the agent over HTTP
(test_api_agent.py, test_features_agent.py); each adds its own config and
helpers on top. The agent runs in a new session so that stopping it reaches
its spawned workers too.
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

from tests.api_support import free_port
from zitops.config import config_from_mapping, config_to_dict


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM an agent, then SIGKILL its whole process group (workers, spares) if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)

class AgentProcess:
    """``zitops agent --config`` with ``data`` (plus this port) as its config; output in ``tmp/agent.out``."""

    def __init__(self, tmp: Path, data: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = headers or {}
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config_to_dict(config_from_mapping({**data, "port": self.port}))))
        self.log = open(tmp / "agent.out", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from zitops.cli import main; main()", "agent", "--config", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Poll /readyz until 200; stop the agent and fail with its output otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", headers=self.headers, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise AssertionError("agent never became ready:\n" + (self.tmp / "agent.out").read_text()[-4000:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL the whole process group if it lingers."""
        stop_process_group(self.proc)
        self.log.close()
