"""docs/observability.md names every metric the agent exports, and the rendered files read back."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from zitops.agent.http.http_metrics import HttpMetrics
from zitops.agent.ops.runtime_metrics import RuntimeMetrics
from zitops.observe.files import k8s_files, plain_files
from zitops.profile import load_profile

REPO = Path(__file__).resolve().parents[2]


def _exported() -> set[str]:
    names = set()
    for registry in (RuntimeMetrics(20).registry, HttpMetrics().registry):
        for family in registry.collect():
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    fleet = (REPO / "zitops/agent/dispatch/fleet.py").read_text()
    names |= set(re.findall(r"# TYPE (zitops_\w+) ", fleet))
    return names


def test_docs_table_every_exported_metric() -> None:
    documented = set(re.findall(r"^\| `(zitops_\w+)` \|", (REPO / "docs/observability.md").read_text(), re.M))
    exported = _exported()
    assert len(exported) > 20
    assert exported == documented, (exported - documented, documented - exported)


def test_rendered_monitoring_files_parse() -> None:
    profile = load_profile("designer")
    files = dict(plain_files(profile) + k8s_files(profile))
    json.loads(files["observability/zitops-dashboard.json"])
    for path, text in files.items():
        if path.endswith(".yaml"):
            assert text.startswith("# Rendered by `zitops deploy`") and yaml.safe_load(text), path
