"""The container targets pass the tools that read them, offline: ``kubectl kustomize`` takes the
k8s target's kustomization.yaml, and docker-compose (v1, Debian's, which checks the Compose
schema without a daemon) takes the compose target's compose.yaml. The image itself is built and
run in tests/e2e/test_image.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from zitops import __version__
from zitops.config import load_config
from zitops.deployment import deploy
from zitops.errors import RenderError

STORE = "postgresql://zitops@db.example:5432/zitops?sslmode=disable"


def kustomize(k8s: Path) -> list[dict]:
    """``kubectl kustomize`` of the directory: every resource it builds."""
    done = subprocess.run(["kubectl", "kustomize", str(k8s)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


def compose_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker-compose", "-f", str(path), "config", "-q"], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("store", ["sqlite", STORE], ids=["one-pod", "fleet"])
def test_kustomization_lists_every_manifest_and_kubectl_builds_it(tmp_path: Path, store: str) -> None:
    plan = deploy.plan(deploy.DeployRequest(targets=("k8s",), out=tmp_path / "out", store=store,
                                            replicas=1 if store == "sqlite" else 2,
                                            image="registry.example/zitops:abc123", zitops_bin="/usr/bin/zitops"))
    deploy.apply(plan)
    k8s = plan.out / "k8s"
    listed = yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]
    rendered = sorted(p.name for p in k8s.glob("*.yaml") if p.name != "kustomization.yaml")
    # Every manifest the target wrote, but the Secret the operator fills first.
    assert sorted(listed) == [n for n in rendered if n != "store-secret.yaml"]
    built = kustomize(k8s)
    assert len(built) == sum(len(list(yaml.safe_load_all((k8s / n).read_text()))) for n in listed)
    (pod,) = [d for d in built if d["kind"] == "Deployment"]
    (agent,) = pod["spec"]["template"]["spec"]["containers"]
    assert agent["image"] == "registry.example/zitops:abc123"
    # args, not command: the image's dumb-init entrypoint stays PID 1.
    assert "command" not in agent and agent["args"][:2] == ["zitops", "agent"]
    # The workers' pixel files pass through /dev/shm: a memory-backed one of disk.shm_mib, not the runtime's 64 MB.
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["template"]["spec"]["volumes"]}
    assert mounts["shm"] == "/dev/shm" and volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Mi"}


def test_image_defaults_to_the_versions_tag_and_refuses_a_bad_ref(tmp_path: Path) -> None:
    plan = deploy.plan(deploy.DeployRequest(targets=("k8s",), out=tmp_path / "a", zitops_bin="/usr/bin/zitops"))
    pod = yaml.safe_load(plan.file("k8s/deployment.yaml").content)
    assert pod["spec"]["template"]["spec"]["containers"][0]["image"] == f"zitops:{__version__}"
    with pytest.raises(RenderError, match="--image"):
        deploy.plan(deploy.DeployRequest(targets=("k8s",), out=tmp_path / "b", image="zitops:1 ; rm -rf /",
                                         zitops_bin="/usr/bin/zitops"))


def test_model_comes_from_a_claim_not_the_image(tmp_path: Path) -> None:
    from tests.engine_support import tiny_model_dir

    plan = deploy.plan(deploy.DeployRequest(targets=("k8s",), out=tmp_path / "out", model=str(tiny_model_dir()),
                                            zitops_bin="/usr/bin/zitops"))
    deploy.apply(plan)
    built = kustomize(plan.out / "k8s")
    (pod,) = [d["spec"]["template"]["spec"] for d in built if d["kind"] == "Deployment"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [deploy.K8S["model_claim"]]
    assert plan.k8s_config is not None and plan.k8s_config.model == deploy.K8S["model_dir"]


def test_compose_one_agent_per_gpu_sharing_postgresql(tmp_path: Path) -> None:
    from tests.engine_support import tiny_model_dir

    model = str(tiny_model_dir())
    plan = deploy.plan(deploy.DeployRequest(targets=("compose",), out=tmp_path / "out", gpus="0,2",
                                            model=model, image="registry.example/zitops:abc123",
                                            zitops_bin="/usr/bin/zitops"))
    deploy.apply(plan)
    compose = plan.out / "compose" / "compose.yaml"
    done = compose_check(compose)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(compose.read_text())["services"]
    assert sorted(services) == ["agent-0", "agent-1", "store"]
    for name, gpu, port in (("agent-0", "0", 7860), ("agent-1", "2", 7861)):
        agent = services[name]
        assert agent["image"] == "registry.example/zitops:abc123" and agent["read_only"] is True
        assert agent["shm_size"] == "256m"  # the workers' pixel files: not the runtime's 64 MB /dev/shm
        (device,) = agent["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "device_ids": [gpu], "capabilities": ["gpu"]}
        assert agent["ports"] == [f"127.0.0.1:{port}:7860"]
        assert "./config.yaml:/etc/zitops/config.yaml:ro" in agent["volumes"]
        assert f"{model}:/models:ro" in agent["volumes"]
        assert agent["depends_on"]["store"]["condition"] == "service_healthy"
    # One config for every agent: the shared store, tokens from a secret, the model from the mount.
    config = load_config(plan.out / "compose" / "config.yaml")
    assert config.store.url is not None and config.store.url.startswith("postgresql://zitops@store:5432/")
    assert config.store.password_file == "/run/secrets/store_password"
    assert config.auth.tokens_file == "/run/secrets/tokens"
    assert config.model == "/models" and config.host == "0.0.0.0" and config.gpus == "auto"
    # The checker is not a rubber stamp: a misspelt key fails it.
    bad = tmp_path / "bad.yaml"
    bad.write_text(compose.read_text().replace("capabilities:", "capabilitys:"))
    assert compose_check(bad).returncode != 0


def test_compose_refuses_an_external_store(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="--target compose"):
        deploy.plan(deploy.DeployRequest(targets=("compose",), out=tmp_path, store=STORE, gpus="0",
                                         zitops_bin="/usr/bin/zitops"))
