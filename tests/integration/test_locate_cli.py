"""Operator commands find their deployment with no flags: ``status``, ``health``, ``failures``,
``doctor`` and ``logs`` run from the directory README command 1 leaves, against a real agent on a
port that is not 7860, with the token read from the deployment's own tokens file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
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


def test_logs_merge_the_agent_and_worker_files_filter_and_follow(project: tuple[Path, AgentProcess]) -> None:
    root, agent = project
    everything = zitops(root, "logs")  # a pipe: JSON lines
    assert everything.returncode == 0, everything.stderr
    records = [json.loads(line) for line in everything.stdout.splitlines()]
    processes = {str(r.get("process")) for r in records}
    assert "agent" in processes and any(p.startswith("worker") for p in processes), processes
    stamps = [r["timestamp"] for r in records if "timestamp" in r]
    assert stamps == sorted(stamps)  # one stream, merged by time
    errors = [json.loads(line) for line in zitops(root, "logs", "--level", "warning").stdout.splitlines()]
    assert errors and all(r["level"] in ("warning", "error", "critical") for r in errors)
    assert any(r.get("job_id") for r in errors)  # the failed job's error line
    assert zitops(root, "logs", "--since", "2099-01-01T00:00:00").stdout == ""
    pretty = zitops(root, "logs", "--level", "error", "--json", "-n", "1")
    assert len(pretty.stdout.splitlines()) == 1
    # --follow: a new line written after the command started shows up.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZITOPS_")}
    proc = subprocess.Popen([sys.executable, "-c", CLI, "logs", "--follow", "-n", "0"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    # The follower may not be reading yet when a line is written: keep writing until one shows (bounded).
    writer = threading.Thread(target=_markers, args=(root, proc), daemon=True)
    killer = threading.Timer(30, proc.kill)
    writer.start()
    killer.start()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "follow-marker" in first, first
    finally:
        killer.cancel()
        proc.kill()
        proc.wait(10)


def _markers(root: Path, proc: subprocess.Popen[str]) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            return
        with (root / "deploy" / "log_dir" / "zitops.log").open("a") as fh:
            fh.write(json.dumps({"timestamp": "2100-01-01T00:00:00Z", "level": "info", "event": "follow-marker",
                                 "process": "agent"}) + "\n")
        time.sleep(0.2)


def test_reload_swaps_the_tokens_without_a_restart(project: tuple[Path, AgentProcess]) -> None:
    root, agent = project
    tokens = root / "deploy" / "tokens"
    fresh = "locate-fresh-token-0123456789abcdef"
    pid = agent.proc.pid
    try:
        tokens.write_text(f"admin:{fresh}\n")
        done = zitops(root, "reload")
        assert done.returncode == 0 and "sent SIGHUP to agent pid" in done.stdout, done.stderr
        wait_until(lambda: httpx.get(agent.url + "/status", headers={"Authorization": f"Bearer {ADMIN}"},
                                     timeout=10).status_code == 401, 30, what="the revoked token to stop working")
        assert httpx.get(agent.url + "/status", headers={"Authorization": f"Bearer {fresh}"},
                         timeout=10).status_code == 200
        assert agent.proc.pid == pid and agent.proc.poll() is None  # no restart
        log = (root / "deploy" / "log_dir" / "zitops.log").read_text()
        line = next(json.loads(x) for x in log.splitlines() if '"tokens reloaded"' in x)
        assert (line["tokens"], line["admins"]) == (1, 1)
        assert fresh not in log and ADMIN not in log
        # A bad edit (world-readable) is refused and the tokens in force stay.
        tokens.chmod(0o644)
        assert zitops(root, "reload").returncode == 0
        wait_until(lambda: "keeping the current tokens" in (root / "deploy" / "log_dir" / "zitops.log").read_text(),
                   30, what="the refusal to be logged")
        assert httpx.get(agent.url + "/status", headers={"Authorization": f"Bearer {fresh}"},
                         timeout=10).status_code == 200
    finally:
        tokens.write_text(f"admin:{ADMIN}\n")
        tokens.chmod(0o600)
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: httpx.get(agent.url + "/status", headers={"Authorization": f"Bearer {ADMIN}"},
                                     timeout=10).status_code == 200, 30, what="the admin token back")
