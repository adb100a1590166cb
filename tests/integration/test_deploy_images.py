"""``zitops deploy --images s3://...``: the config names the credentials file, a pod reads it from a Secret,
and the secret itself is in no rendered file; the manifests pass the strict offline validator."""

from __future__ import annotations

import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from zitops.config import load_config
from zitops.deployment import deploy
from zitops.errors import RenderError, ZitopsError

K8S_VERSION = "1.31.0"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def credentials(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "s3-credentials"
    path.write_text(f"[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = {SECRET}\n")
    os.chmod(path, mode)
    return path


def test_images_render_for_hosts_and_pods_without_the_secret(tmp_path: Path) -> None:
    creds = credentials(tmp_path)
    plan = deploy.plan(deploy.DeployRequest(
        out=tmp_path / "out", images="s3://zitops-images/prod", s3_endpoint="http://10.0.0.5:8333",
        s3_credentials_file=creds, zitops_bin="/usr/bin/zitops"))
    deploy.apply(plan)
    config = load_config(plan.out / "config.yaml")
    assert config.images.url == "s3://zitops-images/prod" and config.images.s3_credentials_file == str(creds)
    for path in plan.out.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text("utf-8", "replace"), path
    pod_config = yaml.safe_load(yaml.safe_load((plan.out / "k8s" / "configmap.yaml").read_text())
                                ["data"]["config.yaml"])
    assert pod_config["images"]["s3_credentials_file"] == "/etc/zitops/s3/credentials"
    deployment = yaml.safe_load((plan.out / "k8s" / "deployment.yaml").read_text())
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["s3"]["secret"]["secretName"] == "zitops-s3"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "s3", "mountPath": "/etc/zitops/s3", "readOnly": True} in container["volumeMounts"]
    for path in sorted((plan.out / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] != "Kustomization":  # kustomize's own file, not a Kubernetes object
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_images_flags_are_checked(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="--s3-credentials-file .*chmod 600"):
        deploy.plan(deploy.DeployRequest(targets=("systemd",), out=tmp_path / "o", images="s3://b1b/p",
                                         s3_credentials_file=credentials(tmp_path, 0o644), zitops_bin="/bin/true"))
    with pytest.raises(RenderError, match="only apply with --images"):
        deploy.plan(deploy.DeployRequest(targets=("systemd",), out=tmp_path / "o", s3_endpoint="http://h:1",
                                         zitops_bin="/bin/true"))
    with pytest.raises(ZitopsError, match="images.url"):
        deploy.plan(deploy.DeployRequest(targets=("systemd",), out=tmp_path / "o", images="https://b/p",
                                         zitops_bin="/bin/true"))


def test_webhook_settings_reach_the_config_through_set(tmp_path: Path) -> None:
    plan = deploy.plan(deploy.DeployRequest(
        targets=("systemd",), out=tmp_path / "o", zitops_bin="/bin/true",
        overrides=("webhooks.secret_file=/etc/zitops/webhook-secret",
                   "webhooks.allowed_hosts=hooks.example.com,http://10.0.0.9:8080", "webhooks.max_attempts=3")))
    hooks = plan.config.webhooks
    assert hooks.secret_file == "/etc/zitops/webhook-secret" and hooks.max_attempts == 3
    assert hooks.allowed_hosts == ["hooks.example.com", "http://10.0.0.9:8080"]
    with pytest.raises(ZitopsError, match="allowed_hosts"):
        deploy.plan(deploy.DeployRequest(targets=("systemd",), out=tmp_path / "o", zitops_bin="/bin/true",
                                         overrides=("webhooks.allowed_hosts=http://10.0.0.9",)))
