"""One job, one connected trace across the agent and its worker, seen by a real OTLP/HTTP receiver.

A real agent (tiny pipeline on the CPU, spawned worker) is started with the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a receiver on
127.0.0.1 that decodes the protobuf. A caller's ``traceparent`` is continued.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import httpx
import pytest

from tests.agent_process_support import AgentProcess
from tests.otlp_support import OtlpReceiver, Span
from tests.runtime_support import REAL_ENGINE_SETS, link_tiny_model, wait_until
from zitops.profile import load_profile

pytestmark = pytest.mark.slow

SETS = ["generation.width=64", "generation.height=64", "generation.steps=2", "queue.job_timeout_s=300",
        "queue.drain_timeout_s=10"]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
JOB_SPANS = {"zitops.queue_wait", "zitops.generate", "zitops.encode", "zitops.store.write"}


class Traced:
    """The receiver, the agent exporting to it, and the agent's log directory."""

    def __init__(self, receiver: OtlpReceiver, agent: AgentProcess) -> None:
        self.receiver = receiver
        self.agent = agent

    def run_job(self, headers: dict[str, str]) -> str:
        with httpx.Client(base_url=self.agent.url, timeout=60) as c:
            r = c.post("/v1/jobs", json={"prompt": "a fox", "seed": 3}, headers=headers)
            assert r.status_code == 202, r.text
            job: str = r.json()["id"]
            wait_until(lambda: c.get(f"/v1/jobs/{job}").json()["status"] == "succeeded", 120, what=f"job {job}")
        return job

    def trace_of(self, job: str) -> list[Span]:
        """The spans of the job's trace, once its job span and all its children have arrived."""
        def complete() -> list[Span] | None:
            spans = self.receiver.spans()
            root = [s for s in spans if s.name == "zitops.job" and s.attributes.get("zitops.job_id") == job]
            if not root:
                return None
            mine = [s for s in spans if s.trace_id == root[0].trace_id]
            return mine if {s.name for s in mine} >= JOB_SPANS and any(s.name.startswith("POST") for s in mine) \
                else None
        found: list[Span] = wait_until(complete, 60, interval=0.2, what=f"the spans of job {job}")
        return found


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    tmp = tmp_path_factory.mktemp("trace")
    link_tiny_model(tmp / "state_dir")
    with OtlpReceiver() as receiver, mock.patch.dict(os.environ, {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}):
        agent = AgentProcess(tmp, {
            "profile": load_profile("designer", SETS + REAL_ENGINE_SETS).model_dump(mode="json"),
            "paths": {k: str(tmp / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")},
            "engine": {"kind": "diffusers"}, "log_format": "json",
        })
        try:
            agent.wait_ready()
            yield Traced(receiver, agent)
        finally:
            agent.stop()


def test_one_job_is_one_connected_trace_across_both_processes(traced: Traced) -> None:
    job = traced.run_job({"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    spans = traced.trace_of(job)
    by_name = {s.name: s for s in spans}
    (http,) = [s for s in spans if s.name.startswith("POST")]
    # The caller's trace goes on: same trace id, and the request's span is the caller span's child.
    assert http.name == "POST /v1/jobs" and http.trace_id == CALLER_TRACE and http.parent_id == CALLER_SPAN
    assert http.attributes["http.response.status_code"] == 202 and http.service == "zitops-agent"
    root = by_name["zitops.job"]
    assert root.parent_id == http.span_id
    for name in JOB_SPANS:
        assert by_name[name].parent_id == root.span_id, name
    generate = by_name["zitops.generate"]
    assert generate.service == "zitops-worker" and root.service == "zitops-agent"
    assert {k: generate.attributes[k] for k in ("zitops.width", "zitops.height", "zitops.steps", "zitops.sampler",
                                                "zitops.profile", "zitops.precision")} == {
        "zitops.width": 64, "zitops.height": 64, "zitops.steps": 2, "zitops.sampler": "euler",
        "zitops.profile": "designer", "zitops.precision": "fp32"}
    # Every span of the trace hangs from the caller's span: one tree, nothing dangling.
    ids = {s.span_id for s in spans} | {CALLER_SPAN}
    assert all(s.parent_id in ids for s in spans), [(s.name, s.parent_id) for s in spans]


def test_a_job_without_traceparent_gets_a_trace_of_its_own(traced: Traced) -> None:
    job = traced.run_job({})
    spans = traced.trace_of(job)
    (http,) = [s for s in spans if s.name.startswith("POST")]
    assert http.parent_id == "" and http.trace_id != CALLER_TRACE
    assert len({s.trace_id for s in spans}) == 1 and len(spans) >= 6
    # Probes and scrapes (wait_ready polled /readyz) make no spans.
    assert not [s for s in traced.receiver.spans() if s.attributes.get("url.path") in ("/readyz", "/livez")]


def test_log_lines_of_a_traced_job_carry_its_trace_id(traced: Traced) -> None:
    job = traced.run_job({"traceparent": f"00-{'ab' * 16}-{CALLER_SPAN}-01"})
    traced.trace_of(job)
    log_dir = Path(traced.agent.tmp) / "log_dir"

    def lines(path: Path) -> list[dict[str, object]]:
        out = []
        for line in path.read_text("utf-8", "replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("job_id") == job:
                out.append(entry)
        return out

    agent_lines, worker_lines = lines(log_dir / "zitops.log"), lines(log_dir / "worker-w0.log")
    assert {e["event"] for e in agent_lines} >= {"job queued", "job started", "job succeeded"}, agent_lines
    assert "job started" in {e["event"] for e in worker_lines}, worker_lines
    for entry in agent_lines + worker_lines:
        assert entry.get("trace_id") == "ab" * 16, entry
