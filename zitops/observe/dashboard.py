"""The Grafana dashboard: panels as a table of PromQL targets, assembled into Grafana's JSON model.

Built here as plain data rather than with grafana-foundation-sdk: the panels
are few and plain timeseries, the JSON model they need is stable across
Grafana 9 to 11, and ``zitops deploy`` stays free of a dependency whose
releases track one Grafana version each. The same table is what the tests
query against a real Prometheus, so a panel cannot name a metric that is not
exported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from zitops.observe.rules import JOB

UID = "zitops-agents"
TITLE = "zitops agents"
SEL = f'job="{JOB}", instance=~"$instance"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    """One timeseries panel: its title, unit, and (legend, PromQL) targets."""

    title: str
    unit: str
    targets: tuple[tuple[str, str], ...]
    description: str = ""


def _q(quantile: float) -> str:
    return (f"histogram_quantile({quantile}, sum by (le) "
            f"(rate(zitops_http_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))")


PANELS: tuple[Panel, ...] = (
    Panel("Request rate by route and status", "reqps", (
        ("{{route}} {{status}}", f"sum by (route, status) (rate(zitops_http_requests_total{{{SEL}}}[{RATE}]))"),
    )),
    Panel("Request latency p50, p95, p99", "s", (("p50", _q(0.5)), ("p95", _q(0.95)), ("p99", _q(0.99)))),
    Panel("Queue depth against cap", "short", (
        ("depth {{instance}}", f"zitops_queue_depth{{{SEL}}}"),
        ("cap {{instance}}", f"zitops_queue_cap{{{SEL}}}"),
    ), "429 once depth reaches cap"),
    Panel("Jobs running and finished by outcome", "short", (
        ("running {{instance}}", f"zitops_jobs_running{{{SEL}}}"),
        ("{{outcome}} /s", f"sum by (outcome) (rate(zitops_jobs_total{{{SEL}}}[{RATE}]))"),
    )),
    Panel("Job time by stage (mean)", "s", (
        ("{{stage}}", f"sum by (stage) (rate(zitops_job_stage_seconds_sum{{{SEL}}}[{RATE}])) / "
                      f"sum by (stage) (rate(zitops_job_stage_seconds_count{{{SEL}}}[{RATE}]))"),
    ), "queue, start, engine, pack, transfer, encode seconds per successful job"),
    Panel("VRAM per GPU", "mbytes", (
        ("used gpu {{gpu}} {{instance}}", f"zitops_gpu_vram_used_mib{{{SEL}}}"),
        ("total gpu {{gpu}} {{instance}}", f"zitops_gpu_vram_total_mib{{{SEL}}}"),
        ("allocated {{worker}} {{instance}}", f"zitops_worker_allocated_mib{{{SEL}}}"),
        ("reserved {{worker}} {{instance}}", f"zitops_worker_reserved_mib{{{SEL}}}"),
    ), "used and total from NVML per GPU; allocated and reserved from torch's allocator per worker"),
    Panel("Restarts and recoveries", "short", (
        ("restart {{reason}}", f"sum by (reason) (increase(zitops_worker_restarts_total{{{SEL}}}[{RATE}]))"),
        ("recovery {{kind}}", f"sum by (kind) (increase(zitops_recoveries_total{{{SEL}}}[{RATE}]))"),
    )),
    Panel("Ready and standby workers", "short", (
        ("ready workers {{instance}}", f"zitops_workers_ready{{{SEL}}}"),
        ("standby spares {{instance}}", f"zitops_standby_workers{{{SEL}}}"),
        ("agent ready {{instance}}", f"zitops_ready{{{SEL}}}"),
    )),
)


def _panel(i: int, p: Panel) -> dict[str, Any]:
    return {
        "id": i + 1, "type": "timeseries", "title": p.title, "description": p.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for n, (legend, expr) in enumerate(p.targets)],
    }


def dashboard() -> dict[str, Any]:
    """Grafana's dashboard JSON model (schemaVersion 39): the panels and the datasource and instance variables."""
    return {
        "uid": UID, "title": TITLE, "tags": ["zitops"], "timezone": "browser", "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            {"name": "instance", "label": "Agent / pod", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": f'label_values(zitops_queue_cap{{job="{JOB}"}}, instance)', "refId": "instance"},
             "definition": f'label_values(zitops_queue_cap{{job="{JOB}"}}, instance)',
             "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "sort": 1, "hide": 0},
        ]},
        "panels": [_panel(i, p) for i, p in enumerate(PANELS)],
    }


def dashboard_json() -> str:
    """The dashboard as the JSON file Grafana imports."""
    return json.dumps(dashboard(), indent=2) + "\n"


def dashboard_configmap(name: str = "zitops-dashboard") -> dict[str, Any]:
    """A ConfigMap that Grafana's dashboard sidecar loads (it watches the ``grafana_dashboard`` label)."""
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"grafana_dashboard": "1", "app.kubernetes.io/name": "zitops"}},
        "data": {"zitops-dashboard.json": dashboard_json()},
    }
