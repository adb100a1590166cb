"""The k8s target's monitoring: a ServiceMonitor, the PrometheusRule and the dashboard ConfigMap under
k8s/monitoring, accepted offline by ``kubectl kustomize``, kubernetes-validate (the ConfigMap) and the
operator's schema subset (tests/data); and the pod's scrape annotations for clusters without the operator."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from zitops.deployment import deploy
from zitops.observe.files import METRICS_SECRET

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.31.0"
SCHEMA = json.loads((REPO / "tests" / "data" / "monitoring-v1-subset.json").read_text())
KUBECTL = shutil.which("kubectl")


def _validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"] == "monitoring.coreos.com/v1":
        jsonschema.validate(doc, {**SCHEMA, "$ref": f"#/definitions/{doc['kind']}"})
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    plan = deploy.plan(deploy.DeployRequest(targets=("k8s",), out=tmp_path_factory.mktemp("mon") / "out",
                                            zitops_bin="/usr/bin/zitops"))
    deploy.apply(plan)
    return plan.out


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_monitoring_manifests_validate_offline(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", lambda *_: (_ for _ in ()).throw(AssertionError("network")))
    kinds = []
    for name in ("servicemonitor", "prometheusrule", "dashboard-configmap"):
        for doc in _docs(out / "k8s" / "monitoring" / f"{name}.yaml"):
            _validate(doc)
            kinds.append(doc["kind"])
    assert sorted(kinds) == ["ConfigMap", "PrometheusRule", "ServiceMonitor"]
    # The schema is not a rubber stamp: a misspelt endpoint field fails.
    (monitor,) = _docs(out / "k8s" / "monitoring" / "servicemonitor.yaml")
    monitor["spec"]["endpoints"][0]["bearerToken"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        _validate(monitor)


def test_service_monitor_selects_the_service_and_its_port(out: Path) -> None:
    (monitor,) = _docs(out / "k8s" / "monitoring" / "servicemonitor.yaml")
    (service,) = _docs(out / "k8s" / "service.yaml")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # The job label is the Service's name: what the alert rules select.
    assert service["metadata"]["name"] == "zitops" and "jobLabel" not in monitor["spec"]
    assert endpoint["authorization"]["credentials"]["name"] == METRICS_SECRET


def test_pod_carries_scrape_annotations(out: Path) -> None:
    (dep,) = _docs(out / "k8s" / "deployment.yaml")
    notes = dep["spec"]["template"]["metadata"]["annotations"]
    (port,) = dep["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert notes == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port["containerPort"]),
                     "prometheus.io/path": "/metrics"}


@pytest.mark.skipif(KUBECTL is None, reason="kubectl missing")
def test_kubectl_kustomize_builds_the_monitoring_set_offline(out: Path, tmp_path: Path) -> None:
    assert KUBECTL is not None
    r = subprocess.run([KUBECTL, "kustomize", str(out / "k8s" / "monitoring")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(d["kind"] for d in yaml.safe_load_all(r.stdout) if d) == [
        "ConfigMap", "PrometheusRule", "ServiceMonitor"]
    broken = tmp_path / "broken"
    shutil.copytree(out / "k8s" / "monitoring", broken)
    (broken / "servicemonitor.yaml").write_text("kind: [unclosed\n")
    assert subprocess.run([KUBECTL, "kustomize", str(broken)], capture_output=True, timeout=120).returncode != 0
