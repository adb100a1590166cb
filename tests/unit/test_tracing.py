"""Tracing is off by default with nothing of OpenTelemetry imported; on by the OTEL_* variables or the config."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests.otlp_support import OtlpReceiver
from zitops.agent.ops.job_traces import JobTraces
from zitops.config import config_from_mapping
from zitops.tracing import NO_TRACER, make_tracer, wanted
from zitops.worker.protocol import Job

REPO = Path(__file__).resolve().parents[2]


def _modules_after(imports: str) -> list[str]:
    code = (f"import sys; import {imports}; import zitops.tracing as t; "
            "assert t.make_tracer(None, 'x') is t.NO_TRACER; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'zitops.tracing_')))))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120, check=True)
    return out.stdout.split()


def test_off_by_default_imports_nothing_of_opentelemetry() -> None:
    # The worker's process: nothing at all.
    assert _modules_after("zitops.worker.process") == []
    # The agent: FastAPI (0.165+) itself imports the OpenTelemetry API; zitops adds no SDK and no exporter.
    agent = _modules_after("zitops.agent.server, zitops.agent.http.app")
    assert not [m for m in agent if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter", "zitops."))], agent


@pytest.mark.parametrize(("endpoint", "env", "on"), [
    (None, {}, False),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ("http://127.0.0.1:4318", {}, True),
    ("http://127.0.0.1:4318", {"OTEL_SDK_DISABLED": "true"}, False),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
])
def test_when_tracing_is_on(endpoint: str | None, env: dict[str, str], on: bool) -> None:
    assert wanted(endpoint, env) is on


def test_the_config_key_turns_it_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    paths = {k: str(tmp_path / k) for k in ("state_dir", "log_dir", "output_dir", "cache_dir")}
    with OtlpReceiver() as receiver:
        config = config_from_mapping({"profile": {"name": "p", "description": "d"}, "paths": paths,
                                      "tracing": {"endpoint": receiver.url}}, "test")
        tracer = make_tracer(config.tracing.endpoint, "zitops-agent")
        assert tracer.enabled and tracer is not NO_TRACER
        span = tracer.start("s")
        assert tracer.carrier(span)["traceparent"].startswith("00-")
        trace_id = tracer.log_fields(span)["trace_id"]
        tracer.end(span)
        tracer.shutdown()  # flushes
        (got,) = receiver.spans()
        assert (got.name, got.trace_id, got.service) == ("s", trace_id, "zitops-agent")
    with pytest.raises(Exception, match="tracing.endpoint"):
        config_from_mapping({"profile": {"name": "p", "description": "d"}, "paths": paths,
                             "tracing": {"endpoint": "not a url"}}, "test")


def test_off_a_job_carries_no_context_and_its_message_still_pickles() -> None:
    traces = JobTraces()
    traces.submitted("j1", {"seeds": [1]})
    assert traces.handed("j1", "w0") == {} and traces.trace_id("j1") is None
    with traces.span("j1", "zitops.encode"):
        pass
    traces.finished("j1", "succeeded")
    job = Job("j1", {"prompt": "x"}, trace={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
    assert pickle.loads(pickle.dumps(job)) == job
