"""Prometheus alert rules for zitops agents, with thresholds from the profile.

Every expression reads metrics the agent really exports (``zitops.agent.http.http_metrics``,
``zitops.agent.ops.runtime_metrics``, ``zitops.agent.dispatch.fleet``); counters carry the
``_total`` suffix prometheus_client gives them. Each rule names a runbook
section of docs/operations.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zitops.profile import Profile

JOB = "zitops"
"""The scrape job the rules select: the ServiceMonitor's Service name, and the docs' scrape config."""
RUNBOOK = "docs/operations.md"
GROUP = "zitops.rules"
QUEUE_NEAR_CAP = 0.8
JOB_FAILURE_RATIO = 0.05
HTTP_5XX_RATIO = 0.01
AGENT_DOWN_FOR = "2m"


@dataclass(frozen=True)
class Rule:
    """One alert: its PromQL, how long it must hold, severity, and what the operator reads."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    anchor: str  # the runbook heading's slug in docs/operations.md


def _duration(seconds: float) -> str:
    """Seconds as a Prometheus duration (whole seconds, at least 1s)."""
    return f"{max(1, round(seconds))}s"


def _sel(extra: str = "") -> str:
    return "{" + f'job="{JOB}"' + (f",{extra}" if extra else "") + "}"


def alert_rules(profile: Profile) -> list[Rule]:
    """The alerts, with the thresholds the profile sets (startup deadline, flap limit, leak, job budget)."""
    wd = profile.watchdog
    gen = profile.generation
    by = "sum by (job, instance)"
    failed, finished = _sel('outcome="failed"'), _sel('outcome=~"succeeded|failed"')
    errors = _sel('status=~"5.."')
    return [
        Rule("ZitopsAgentDown", f"up{_sel()} == 0", AGENT_DOWN_FOR, "critical",
             "zitops agent {{ $labels.instance }} is down",
             "Prometheus has not scraped {{ $labels.instance }} for " + AGENT_DOWN_FOR + ": the process is gone "
             "or its /metrics does not answer.", "zitopsagentdown"),
        Rule("ZitopsAgentNotReady", f"zitops_ready{_sel()} == 0", _duration(wd.startup_timeout_s), "critical",
             "zitops agent {{ $labels.instance }} has not been ready for its start-up deadline",
             f"/readyz has said not ready for longer than watchdog.startup_timeout_s ({wd.startup_timeout_s:g} s): "
             "no worker loaded, the queue full, heartbeats stale or the store down.", "zitopsagentnotready"),
        Rule("ZitopsQueueNearCap",
             f"zitops_queue_depth{_sel()} >= {QUEUE_NEAR_CAP} * zitops_queue_cap{_sel()}", "5m", "warning",
             "zitops queue on {{ $labels.instance }} near its cap",
             f"The queue has held at least {QUEUE_NEAR_CAP:.0%} of queue.depth ({profile.queue.depth}) for 5 minutes; "
             "clients are about to get 429.", "zitopsqueuenearcap"),
        Rule("ZitopsJobFailureRatio",
             f"{by} (rate(zitops_jobs_total{failed}[10m])) / "
             f"{by} (rate(zitops_jobs_total{finished}[10m])) > {JOB_FAILURE_RATIO}",
             "10m", "warning",
             "zitops jobs failing on {{ $labels.instance }}",
             f"More than {JOB_FAILURE_RATIO:.0%} of finished jobs failed, over 10 minutes for 10 minutes.", "zitopsjobfailureratio"),
        Rule("ZitopsHttp5xxRatio",
             f"{by} (rate(zitops_http_requests_total{errors}[5m])) / "
             f"{by} (rate(zitops_http_requests_total{_sel()}[5m])) > {HTTP_5XX_RATIO}", "5m", "warning",
             "zitops answers 5xx on {{ $labels.instance }}",
             f"More than {HTTP_5XX_RATIO:.0%} of HTTP responses were 5xx, over 5 minutes for 5 minutes.", "zitopshttp5xxratio"),
        Rule("ZitopsWorkersFlapping",
             f"{by} (increase(zitops_worker_restarts_total{_sel()}[1h])) >= {wd.flap_limit}", "0s", "warning",
             "zitops workers restarting on {{ $labels.instance }}",
             f"At least {wd.flap_limit} worker restarts in the last hour (watchdog.flap_limit is {wd.flap_limit} "
             f"per {wd.flap_window_s:g} s, where the agent gives up): workers crash, hang or leak and come back.", "zitopsworkersflapping"),
        Rule("ZitopsVramCreep",
             f"deriv(zitops_worker_allocated_mib{_sel()}[30m]) * 1800 > {wd.leak_threshold_mib} "
             f"or deriv(zitops_gpu_vram_used_mib{_sel()}[30m]) * 1800 > {wd.leak_threshold_mib}", "40m", "warning",
             "GPU memory creeping up on {{ $labels.instance }}",
             f"Allocated or NVML-used memory has grown faster than watchdog.leak_threshold_mib "
             f"({wd.leak_threshold_mib} MiB) per 30 minutes, for 40 minutes (longer than the slope's window, so one "
             "model load does not fire it): a leak the watchdog did not recycle.",
             "zitopsvramcreep"),
        Rule("ZitopsJobTimeOverBudget",
             f"histogram_quantile(0.95, sum by (job, instance, le) (rate(zitops_job_seconds_bucket{_sel()}[15m]))) "
             f"> {gen.max_job_seconds:g}", "15m", "warning",
             "zitops p95 job time over budget on {{ $labels.instance }}",
             f"The 95th percentile of worker time per job, over 15 minutes, has been above the profile's "
             f"generation.max_job_seconds ({gen.max_job_seconds:g} s) for 15 minutes.", "zitopsjobtimeoverbudget"),
        Rule("ZitopsStoreUnreachable", f"zitops_store_up{_sel()} == 0", "2m", "critical",
             "zitops agent {{ $labels.instance }} cannot reach the shared job store",
             "The fleet's PostgreSQL job store has not answered for 2 minutes; outcomes wait in the agent's outbox.",
             "zitopsstoreunreachable"),
    ]


def rule_groups(profile: Profile) -> dict[str, Any]:
    """The rules as a Prometheus rules file's ``groups`` document."""
    rules = []
    for r in alert_rules(profile):
        rule: dict[str, Any] = {"alert": r.name, "expr": r.expr}
        if r.for_ != "0s":
            rule["for"] = r.for_
        rule["labels"] = {"severity": r.severity, "service": "zitops"}
        rule["annotations"] = {"summary": r.summary, "description": r.description,
                               "runbook_url": f"{RUNBOOK}#{r.anchor}"}
        rules.append(rule)
    return {"groups": [{"name": GROUP, "rules": rules}]}


def prometheus_rule(profile: Profile, name: str = "zitops") -> dict[str, Any]:
    """The same groups as a prometheus-operator ``PrometheusRule``."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "zitops", "role": "alert-rules"}},
        "spec": rule_groups(profile),
    }
