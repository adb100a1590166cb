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

HEADER = "# Rendered by `zitops deploy` (docs/observability.md). Alerts and runbooks: docs/operations.md.\n"


def _yaml(data: object) -> str:
    return HEADER + yaml.safe_dump(data, sort_keys=False, width=1000, allow_unicode=True)


def plain_files(profile: Profile) -> list[tuple[str, str]]:
    """The rules file (for ``rule_files:``) and the dashboard to import, whatever the target."""
    return [("observability/zitops-rules.yaml", _yaml(rule_groups(profile))),
            ("observability/zitops-dashboard.json", dashboard_json())]


def k8s_files(profile: Profile) -> list[tuple[str, str]]:
    """The PrometheusRule and the dashboard's ConfigMap for Grafana's sidecar."""
    return [("k8s/monitoring/prometheusrule.yaml", _yaml(prometheus_rule(profile))),
            ("k8s/monitoring/dashboard-configmap.yaml", _yaml(dashboard_configmap()))]
