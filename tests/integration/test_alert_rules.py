"""The rendered alert rules pass ``promtool check rules``, and ``promtool test rules`` shows each one
firing on series that should fire it and staying quiet on series that should not."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from zitops.observe.rules import alert_rules, prometheus_rule, rule_groups
from zitops.profile import load_profile

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: apt-get install prometheus")
INSTANCE = "a:7860"
SEL = f'job="zitops",instance="{INSTANCE}"'
REPO = Path(__file__).resolve().parents[2]

# Per alert: (series that fire it, series that must not, minutes at which to evaluate, extra alert labels).
# The designer profile: startup_timeout_s 600, flap_limit 5, leak_threshold_mib 512, max_job_seconds 120.
CASES: dict[str, tuple[list[dict[str, str]], list[dict[str, str]], int, dict[str, str]]] = {
    "ZitopsAgentDown": ([{"series": f"up{{{SEL}}}", "values": "0x10"}],
                        [{"series": f"up{{{SEL}}}", "values": "1x10"}], 5, {}),
    "ZitopsAgentNotReady": ([{"series": f"zitops_ready{{{SEL}}}", "values": "0x20"}],
                            # not ready for 6 minutes of start-up, then ready: inside the deadline
                            [{"series": f"zitops_ready{{{SEL}}}", "values": "0x6 1x14"}], 15, {}),
    "ZitopsQueueNearCap": ([{"series": f"zitops_queue_depth{{{SEL}}}", "values": "17x10"},
                            {"series": f"zitops_queue_cap{{{SEL}}}", "values": "20x10"}],
                           [{"series": f"zitops_queue_depth{{{SEL}}}", "values": "15x10"},
                            {"series": f"zitops_queue_cap{{{SEL}}}", "values": "20x10"}], 8, {}),
    "ZitopsJobFailureRatio": (
        [{"series": f'zitops_jobs_total{{{SEL},outcome="failed"}}', "values": "0+1x40"},
         {"series": f'zitops_jobs_total{{{SEL},outcome="succeeded"}}', "values": "0+1x40"}],
        # requeues and cancels are not failures; 1 in 50 failed is under 5 %
        [{"series": f'zitops_jobs_total{{{SEL},outcome="failed"}}', "values": "0+1x40"},
         {"series": f'zitops_jobs_total{{{SEL},outcome="succeeded"}}', "values": "0+49x40"},
         {"series": f'zitops_jobs_total{{{SEL},outcome="requeued"}}', "values": "0+30x40"}], 30, {}),
    "ZitopsHttp5xxRatio": (
        [{"series": f'zitops_http_requests_total{{{SEL},route="/v1/jobs",method="POST",status="500"}}',
          "values": "0+1x30"},
         {"series": f'zitops_http_requests_total{{{SEL},route="/v1/jobs",method="POST",status="202"}}',
          "values": "0+9x30"}],
        [{"series": f'zitops_http_requests_total{{{SEL},route="/v1/jobs",method="POST",status="429"}}',
          "values": "0+5x30"},
         {"series": f'zitops_http_requests_total{{{SEL},route="/v1/jobs",method="POST",status="202"}}',
          "values": "0+9x30"}], 20, {}),
    "ZitopsWorkersFlapping": ([{"series": f'zitops_worker_restarts_total{{{SEL},reason="crash"}}',
                                "values": "0x30 1 2 3 4 5 6 7 8 9 10"}],
                              [{"series": f'zitops_worker_restarts_total{{{SEL},reason="crash"}}',
                                "values": "0x30 1 2 3 3 3 3 3 3 3 3"}], 45, {}),
    "ZitopsVramCreep": ([{"series": f'zitops_worker_allocated_mib{{{SEL},worker="w0"}}', "values": "1000+30x120"}],
                        # a model load: one step up, then flat
                        [{"series": f'zitops_worker_allocated_mib{{{SEL},worker="w0"}}',
                          "values": "0x30 20000x90"}], 60, {"worker": "w0"}),
    "ZitopsJobTimeOverBudget": (
        [{"series": f'zitops_job_seconds_bucket{{{SEL},le="{le}"}}', "values": v}
         for le, v in (("60", "0x40"), ("120", "0x40"), ("300", "0+1x40"), ("+Inf", "0+1x40"))],
        [{"series": f'zitops_job_seconds_bucket{{{SEL},le="{le}"}}', "values": v}
         for le, v in (("60", "0+1x40"), ("120", "0+1x40"), ("300", "0+1x40"), ("+Inf", "0+1x40"))], 35, {}),
    "ZitopsStoreUnreachable": ([{"series": f"zitops_store_up{{{SEL}}}", "values": "0x10"}],
                               [{"series": f"zitops_store_up{{{SEL}}}", "values": "1x10"}], 5, {}),
}


def _expected(rule: dict[str, Any], extra: dict[str, str]) -> dict[str, Any]:
    labels = {**rule["labels"], "job": "zitops", "instance": INSTANCE, **extra}
    notes = {k: v.replace("{{ $labels.instance }}", INSTANCE) for k, v in rule["annotations"].items()}
    return {"exp_labels": labels, "exp_annotations": notes}


def _tests(groups: dict[str, Any]) -> list[dict[str, Any]]:
    rules = {r["alert"]: r for r in groups["groups"][0]["rules"]}
    tests = []
    for name, (fire, quiet, minutes, extra) in CASES.items():
        for series, alerts in ((fire, [_expected(rules[name], extra)]), (quiet, [])):
            tests.append({"interval": "1m", "input_series": series, "alert_rule_test": [
                {"eval_time": f"{minutes}m", "alertname": name, "exp_alerts": alerts}]})
    return tests


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "zitops-rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups(load_profile("designer"))))
    return path


def test_every_rule_has_a_case_and_a_runbook_section() -> None:
    rules = alert_rules(load_profile("designer"))
    assert {r.name for r in rules} == set(CASES)
    headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", (REPO / "docs/operations.md").read_text(), re.M)}
    for r in rules:
        assert r.anchor in headings, r.name
        assert r.summary and r.description


def test_promtool_check_rules_passes(rules_file: Path, tmp_path: Path) -> None:
    r = _promtool("check", "rules", rules_file)
    assert r.returncode == 0 and f"SUCCESS: {len(CASES)} rules found" in r.stdout, r.stdout + r.stderr
    # The PrometheusRule's spec is the same rules file.
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(prometheus_rule(load_profile("designer"))["spec"]))
    assert _promtool("check", "rules", spec).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(rules_file.read_text().replace("== 0", "=== 0", 1))
    assert _promtool("check", "rules", bad).returncode != 0


def test_promtool_unit_tests_fire_and_stay_quiet(rules_file: Path) -> None:
    tests = rules_file.parent / "zitops-rules.test.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [rules_file.name], "evaluation_interval": "1m",
                                     "tests": _tests(rule_groups(load_profile("designer")))}))
    r = _promtool("test", "rules", tests)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_thresholds_follow_the_profile() -> None:
    profile = load_profile("designer", ["watchdog.flap_limit=9", "generation.max_job_seconds=45",
                                        "watchdog.startup_timeout_s=90"])
    rules = {r.name: r for r in alert_rules(profile)}
    assert rules["ZitopsWorkersFlapping"].expr.endswith(">= 9")
    assert rules["ZitopsJobTimeOverBudget"].expr.endswith("> 45")
    assert rules["ZitopsAgentNotReady"].for_ == "90s"
