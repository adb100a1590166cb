"""CPU cost of tracing per job: off (the default) against on, exporting to a real OTLP/HTTP receiver.

    python3 benchmarks/tracing_cost.py [JOBS]

Runs, for each job, the tracing calls the agent and its worker make on a
job's path: the HTTP request's span (a caller's traceparent continued), the
job span with its queue wait, encode and store-write children, the carrier
into the Job message, three log lines' trace id look-ups, and the worker's
generate span from the carrier. The receiver (tests/otlp_support.py) runs in
a child process, so the CPU time counted here (time.process_time: every
thread of this process, the exporter's included) is the agent's and worker's
own. Prints one JSON line: microseconds of CPU per job, off, on with spans
made but not exported, and on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECEIVER = ("import sys, time; from tests.otlp_support import OtlpReceiver\n"
            "with OtlpReceiver() as r:\n    print(r.url, flush=True)\n    sys.stdin.read()\n")


def one_job(tracer: object, traces: object, log_trace: object, n: int) -> None:
    """The tracing calls of job ``n``, in the order the agent and the worker make them."""
    from zitops.tracing import current_span

    caller = {"traceparent": f"00-{n + 1:032x}-{n + 1:016x}-01"}
    http = tracer.start("POST", parent=caller, server=True,  # type: ignore[attr-defined]
                        attributes={"http.request.method": "POST", "url.path": "/v1/jobs"})
    token = current_span.set(http)
    job = f"job{n}"
    traces.submitted(job, {"seeds": [n]})  # type: ignore[attr-defined]
    log_trace(job)  # type: ignore[operator]
    current_span.reset(token)
    tracer.end(http, name="POST /v1/jobs", attributes={"http.route": "/v1/jobs",  # type: ignore[attr-defined]
                                                       "http.response.status_code": 202})
    carrier = traces.handed(job, "w0")  # type: ignore[attr-defined]
    log_trace(job)  # type: ignore[operator]
    gen = tracer.start("zitops.generate", parent=carrier or None,  # type: ignore[attr-defined]
                       attributes={"zitops.width": 1024, "zitops.height": 1024, "zitops.steps": 8})
    tracer.log_fields(gen)  # type: ignore[attr-defined]
    tracer.end(gen)  # type: ignore[attr-defined]
    with traces.span(job, "zitops.encode"):  # type: ignore[attr-defined]
        pass
    with traces.span(job, "zitops.store.write"):  # type: ignore[attr-defined]
        pass
    log_trace(job)  # type: ignore[operator]
    traces.finished(job, "succeeded")  # type: ignore[attr-defined]


def measure(tracer: object, jobs: int) -> float:
    """CPU microseconds per job, exporter flushed inside the timing."""
    from zitops.agent.ops.job_traces import JobTraces

    traces = JobTraces(tracer)  # type: ignore[arg-type]
    for n in range(200):  # warm
        one_job(tracer, traces, traces.trace_id, n)
    start = time.process_time()
    for n in range(jobs):
        one_job(tracer, traces, traces.trace_id, n)
    tracer.shutdown()  # type: ignore[attr-defined]
    return (time.process_time() - start) / jobs * 1e6


def main() -> None:
    """Off, then on against a receiver in a child process; one JSON line."""
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    # Room for every span of the run: a full queue would drop spans, and their export cost with them.
    os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", str(jobs * 8))
    from opentelemetry.sdk.trace import TracerProvider

    from zitops.tracing import NO_TRACER, make_tracer
    from zitops.tracing_otel import OtelTracer

    off = measure(NO_TRACER, jobs)
    unexported = OtelTracer("zitops-bench", "http://127.0.0.1:9")  # its spans are made, never exported
    unexported.provider = TracerProvider()
    unexported.tracer = unexported.provider.get_tracer("zitops")
    made = measure(unexported, jobs)
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        on = measure(make_tracer(url, "zitops-bench"), jobs)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    print(json.dumps({"jobs": jobs, "cpu_us_per_job_off": round(off, 2), "cpu_us_per_job_spans_made_not_exported": round(made, 1),
                      "cpu_us_per_job_on": round(on, 1),
                      "added_ms_per_job": round((on - off) / 1000, 3), "cpus": os.cpu_count(),
                      "load_1m": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()
