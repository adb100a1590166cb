"""The rendered Kubernetes probes against a real agent with tokens; refused tokens files, models, old DBs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agent_support import ADMIN, ALICE, CLI, Agent, write_tokens  # noqa: E402
from cli_support import fake_weights, run_cli  # noqa: E402

from zitops.agent.http.tenants import owner_hash  # noqa: E402
from zitops.agent.storage.jobs import MIGRATIONS, JobStore  # noqa: E402
from zitops.deployment import deploy  # noqa: E402
from zitops.engine.request import GenerationRequest  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = Agent(tmp_path_factory.mktemp("probe"))
    try:
        yield a.wait_ready()
    finally:
        a.stop()


def _probe_request(probe: dict[str, object], port: int) -> tuple[str, dict[str, str]]:
    """The path and headers the kubelet sends for an httpGet probe (Host is the pod IP)."""
    get = probe["httpGet"]
    assert isinstance(get, dict)
    headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
    headers.setdefault("Host", f"10.244.0.17:{port}")
    headers.setdefault("User-Agent", "kube-probe/1.31")
    return str(get["path"]), headers


def test_rendered_k8s_probes_pass_on_a_ready_agent_with_tokens(agent: Agent, tmp_path: Path) -> None:
    plan = deploy.plan(deploy.DeployRequest(targets=("k8s",), out=tmp_path / "d", zitops_bin="/usr/bin/true",
                                            port=agent.port))
    manifest = yaml.safe_load(plan.file("k8s/deployment.yaml").content)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert plan.k8s_config is not None and plan.k8s_config.auth.tokens_file  # the pod always has tokens
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        path, headers = _probe_request(container[kind], agent.port)
        r = httpx.get(agent.url + path, headers=headers, timeout=10)
        assert r.status_code == 200, (kind, r.status_code, r.text)
        assert "job" not in r.text and str(agent.tmp) not in r.text
    volumes = {v["name"]: v for v in manifest["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"]["emptyDir"]["sizeLimit"] == "20480Mi"


def test_deploy_start_waits_through_open_probes(agent: Agent) -> None:
    # deploy --start polls base_url + /livez and /readyz without a token.
    from zitops.deployment.deploy_start import _get

    assert _get(agent.url + "/livez") == 200 and _get(agent.url + "/readyz") == 200


@pytest.mark.parametrize(("mode", "owner", "needle"), [
    (0o620, None, "writable by its group"),
    (0o644, None, "chmod 600"),
    (0o600, 65534, "owned by uid 65534"),
])
def test_unsafe_tokens_files_are_refused(tmp_path: Path, mode: int, owner: int | None, needle: str) -> None:
    if owner is not None and os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    a = Agent(tmp_path)
    a.stop()
    tokens = write_tokens(tmp_path / "tokens", f"admin:{ADMIN}\n", mode)
    if owner is not None:
        os.chown(tokens, owner, -1)
    proc = subprocess.run([sys.executable, "-c", CLI, "agent", "--config", str(a.config_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1000:]
    assert ADMIN not in proc.stderr


def test_deploy_refuses_a_model_that_model_check_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "deploy", "--out", str(out), "--model", "/no/such/dir")
    assert code != 0 and "/no/such/dir" in err and "model_index.json" in err and not out.exists()
    partial = fake_weights(tmp_path / "partial")
    (partial / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    code, _, err = run_cli(capsys, "deploy", "--out", str(out), "--model", str(partial))
    assert code != 0 and "vae/diffusion_pytorch_model.safetensors" in err
    for n, ok in enumerate(("tiny", "full-random", str(fake_weights(tmp_path / "good")))):
        code, _, err = run_cli(capsys, "deploy", "--out", str(tmp_path / f"d{n}"), "--model", ok,
                               "--target", "supervisor")
        assert code == 0, err


def test_an_old_jobs_db_gets_the_owner_column(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.executescript("""CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL, request TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
        error TEXT, attempts INTEGER NOT NULL DEFAULT 0, images TEXT NOT NULL DEFAULT '[]', worker TEXT,
        info TEXT NOT NULL DEFAULT '{}');""")
    req = GenerationRequest(prompt="old", seeds=(1,), width=64, height=64, steps=2)
    db.execute("INSERT INTO jobs (id, status, request, created_at) VALUES ('old1', 'queued', ?, 1.0)",
               (__import__("json").dumps(req.to_dict()),))
    db.commit()
    db.close()
    store = JobStore(tmp_path)
    try:
        assert store.get("old1").owner is None  # from before tenants: admins only
        new = store.add(req, owner=owner_hash(ALICE))
        assert store.get(new.id).owner == owner_hash(ALICE)
        assert int(store._db.execute("PRAGMA user_version").fetchone()[0]) == len(MIGRATIONS)
    finally:
        store.close()
    again = JobStore(tmp_path)  # a second start runs no migration twice
    again.close()
