"""The monitoring files ``zitops deploy`` writes: plain ones for any Prometheus, and Kubernetes manifests.

Each is (relative path, text). Plain files go under ``observability/``; the
prometheus-operator and Grafana-sidecar manifests under ``k8s/monitoring/``,
apart from ``k8s/`` itself so that ``kubectl apply -f k8s`` works on a cluster
without the operator's CRDs.
"""

from __future__ import annotations

import yaml

from zitops.observe.dashboard import dashboard_configmap, dashboard_json
from zitops.observe.rules import prometheus_rule, rule_groups
from zitops.profile import Profile

METRICS_SECRET = "zitops-metrics-token"
HEADER = "# Rendered by `zitops deploy` (docs/observability.md). Alerts and runbooks: docs/operations.md.\n"


def _yaml(data: object) -> str:
    return HEADER + yaml.safe_dump(data, sort_keys=False, width=1000, allow_unicode=True)


def plain_files(profile: Profile) -> list[tuple[str, str]]:
    """The rules file (for ``rule_files:``) and the dashboard to import, whatever the target."""
    return [("observability/zitops-rules.yaml", _yaml(rule_groups(profile))),
            ("observability/zitops-dashboard.json", dashboard_json())]


def k8s_files(profile: Profile) -> list[tuple[str, str]]:
    """The ServiceMonitor, the PrometheusRule, the dashboard's ConfigMap for Grafana's sidecar, and their
    kustomization (``kubectl apply -k k8s/monitoring`` where the prometheus-operator runs)."""
    docs = {"servicemonitor.yaml": service_monitor(), "prometheusrule.yaml": prometheus_rule(profile),
            "dashboard-configmap.yaml": dashboard_configmap()}
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": list(docs)}
    return [(f"k8s/monitoring/{name}", _yaml(doc)) for name, doc in {**docs, "kustomization.yaml": kustomization}.items()]


def service_monitor(name: str = "zitops") -> dict[str, object]:
    """A prometheus-operator ServiceMonitor for the agent's Service.

    Its job label is the Service's name (``zitops``, what the rules select);
    ``instance`` becomes the pod's name, which the dashboard's variable lists.
    /metrics needs a bearer token: the Secret ``zitops-metrics-token`` holds one
    line of the tokens file, under the key ``token``.
    """
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "zitops"}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "zitops", "app.kubernetes.io/component": "agent"}},
            "endpoints": [{
                "port": "http", "path": "/metrics", "interval": "15s", "scheme": "http",
                "authorization": {"type": "Bearer", "credentials": {"name": METRICS_SECRET, "key": "token"}},
                "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "instance",
                                 "action": "replace"}],
            }],
        },
    }
