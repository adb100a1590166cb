"""Every dashboard panel's query answers with data from a real Prometheus scraping a real agent.

The agent runs the tiny pipeline on the CPU and serves jobs; one of its
workers is killed once, so restarts and recoveries have series. Debian's
Prometheus scrapes it every second on 127.0.0.1. Only NVML's per-GPU series
are absent on a machine without a GPU: for those the test requires that
Prometheus saw the metric's metadata in the scrape, so a renamed metric still fails.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.agent_process_support import AgentProcess
from tests.prometheus_support import BINARY, Prometheus
from tests.runtime_support import REAL_ENGINE_SETS, link_tiny_model, wait_until
from zitops.observe.dashboard import PANELS, dashboard, dashboard_configmap
from zitops.observe.rules import JOB
from zitops.profile import load_profile

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(BINARY is None, reason="prometheus missing: apt-get install prometheus")]

SETS = ["generation.width=64", "generation.height=64", "generation.steps=2", "queue.job_timeout_s=300",
        "queue.drain_timeout_s=10", "watchdog.restart_backoff_s=0.2"]
NVML_ONLY = {"zitops_gpu_vram_used_mib", "zitops_gpu_vram_total_mib"}
"""Set from NVML per GPU; a CPU worker has none."""


def _concrete(expr: str) -> str:
    """A panel's PromQL with Grafana's variables as Grafana would fill them."""
    return expr.replace("$__rate_interval", "5m").replace('instance=~"$instance"', 'instance=~".*"')


def _has_data(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(s["value"][1])) for s in result)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("dash")
    link_tiny_model(tmp / "state_dir")
    agent = AgentProcess(tmp, {
        "profile": load_profile("designer", SETS + REAL_ENGINE_SETS).model_dump(mode="json"),
        "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
        "engine": {"kind": "diffusers"}, "log_format": "json",
    })
    prom: Prometheus | None = None
    try:
        agent.wait_ready()
        (tmp / "prom").mkdir()
        prom = Prometheus(tmp / "prom", JOB, [f"127.0.0.1:{agent.port}"])
        prom.wait_up()
        with httpx.Client(base_url=agent.url, timeout=60) as c:
            def run_job(seed: int) -> None:
                job = c.post("/v1/jobs", json={"prompt": "a fox", "seed": seed}).json()["id"]
                wait_until(lambda: c.get(f"/v1/jobs/{job}").json()["status"] == "succeeded", 120,
                           what=f"job {job}")
            run_job(1)
            (pid,) = [w["pid"] for w in c.get("/status").json()["workers"]]
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: "zitops_worker_restarts_total{" in c.get("/metrics").text, 60,
                       what="the restart to be counted")
            agent.wait_ready()
            run_job(2)
        yield prom
    finally:
        if prom is not None:
            prom.stop()
        agent.stop()


def test_every_panel_query_returns_data(scraped: Prometheus) -> None:
    known = set(scraped.api("metadata"))
    missing: dict[str, str] = {}

    def all_answer() -> bool:
        missing.clear()
        for panel in PANELS:
            for legend, expr in panel.targets:
                if any(name in expr for name in NVML_ONLY):
                    if not any(name in expr and name in known for name in NVML_ONLY):
                        missing[f"{panel.title} / {legend}"] = "metric never seen in a scrape"
                elif not _has_data(scraped.query(_concrete(expr))):
                    missing[f"{panel.title} / {legend}"] = _concrete(expr)
        return not missing

    # Rates need two scrapes after the last job: wait for them, bounded; then name what has no data.
    with contextlib.suppress(AssertionError):
        wait_until(all_answer, 60, interval=0.5, what="every panel's query to return data")
    assert not missing, "panels without data:\n" + json.dumps(missing, indent=1)


def test_a_renamed_metric_finds_nothing(scraped: Prometheus) -> None:
    # The same check, on a query whose metric was renamed, fails: the test above can fail.
    depth = next(expr for p in PANELS for _, expr in p.targets if "zitops_queue_depth" in expr)
    assert _has_data(scraped.query(_concrete(depth)))
    assert not _has_data(scraped.query(_concrete(depth.replace("zitops_queue_depth", "zitops_queue_size"))))
    assert "zitops_gpu_vram_used_mib" in scraped.api("metadata")
    assert "zitops_gpu_vram_usage_mib" not in scraped.api("metadata")


def test_the_instance_variable_lists_the_agent(scraped: Prometheus) -> None:
    var = next(v for v in dashboard()["templating"]["list"] if v["name"] == "instance")
    metric = var["definition"].removeprefix("label_values(").rsplit(",", 1)[0]
    (series,) = scraped.query(metric)
    assert series["metric"]["instance"].startswith("127.0.0.1:")


def test_dashboard_json_and_configmap() -> None:
    board = dashboard()
    assert len(board["panels"]) == len(PANELS) >= 8
    assert all(t["expr"] for p in board["panels"] for t in p["targets"])
    cm = dashboard_configmap()
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["zitops-dashboard.json"]) == board
    assert yaml.safe_load(yaml.safe_dump(cm)) == cm
