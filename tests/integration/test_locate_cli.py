"""Operator commands find their deployment with no flags: ``status``, ``health``, ``failures``,
``doctor`` and ``logs`` run from the directory README command 1 leaves, against a real agent on a
port that is not 7860, with the token read from the deployment's own tokens file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent_process_support import AgentProcess
from tests.runtime_support import runtime_config, wait_until
from zitops.config import config_to_dict

CLI = "import sys; from zitops.cli import main; sys.exit(main())"
ADMIN = "locate-admin-token-0123456789abcdef"


def zitops(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``zitops ARGS`` in a fresh interpreter, run from ``cwd``, with no ZITOPS_* settings but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ZITOPS_")}
    clean["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env={**clean, **env})


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, AgentProcess]]:
    """A project directory whose ``deploy/`` holds a running agent with tokens and one recorded failure."""
    root = tmp_path_factory.mktemp("project")
    deploy = root / "deploy"
    deploy.mkdir()
    tokens = deploy / "tokens"
    tokens.write_text(f"admin:{ADMIN}\n")
    tokens.chmod(0o600)
    config = runtime_config(deploy, faults={"raise_on_job": 1, "every_incarnation": True},
                            auth={"tokens_file": str(tokens)})
    agent = AgentProcess(deploy, config_to_dict(config))
    assert agent.port != 7860
    try:
        agent.wait_ready()
        headers = {"Authorization": f"Bearer {ADMIN}"}
        job = httpx.post(agent.url + "/v1/jobs", json={"prompt": "fails"}, headers=headers, timeout=10).json()
        wait_until(lambda: httpx.get(f"{agent.url}/v1/jobs/{job['id']}", headers=headers,
                                     timeout=10).json()["status"] == "failed", 60, what="the job to fail")
        yield root, agent
    finally:
        agent.stop()


def test_status_health_and_failures_find_the_deployment_with_no_flags(project: tuple[Path, AgentProcess]) -> None:
    root, agent = project
    status = zitops(root, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert "deploy/config.yaml (./deploy/config.yaml)" in status.stderr
    # /status with tokens configured needs one: the deployment's admin token was read and sent.
    data = json.loads(status.stdout)
    assert data.get("scope") != "tenant" and "workers" in data
    health = zitops(root, "health")
    assert health.returncode == 0 and health.stdout.strip() == "ready", health.stderr
    failures = zitops(root, "failures", "--json")
    assert failures.returncode == 0, failures.stderr
    assert [json.loads(line)["message"] for line in failures.stdout.splitlines()], failures.stdout


def test_zitops_config_beats_the_directory_and_url_wins(project: tuple[Path, AgentProcess],
                                                        tmp_path: Path) -> None:
    root, agent = project
    # From elsewhere, $ZITOPS_CONFIG names the deployment.
    found = zitops(tmp_path, "health", ZITOPS_CONFIG=str(root / "deploy" / "config.yaml"))
    assert found.returncode == 0 and "($ZITOPS_CONFIG)" in found.stderr, found.stderr
    # --url wins over the found deployment: a dead URL fails even though ./deploy would answer.
    dead = zitops(root, "health", "--url", "http://127.0.0.1:9")
    assert dead.returncode != 0 and "http://127.0.0.1:9" in dead.stderr, dead.stderr
    # A named config that is missing is an error, never a fall-through to ./deploy.
    missing = zitops(root, "status", ZITOPS_CONFIG=str(tmp_path / "nope.yaml"))
    assert missing.returncode != 0 and "$ZITOPS_CONFIG" in missing.stderr and "nope.yaml" in missing.stderr
