"""The agent's HTTP overhead on a CPU: everything outside the worker's engine call, per stage.

A real ``zitops agent`` (disposable loopback deployment, the fault engine
with full-resolution noise pixels, PNG's worst case and what random weights
make) answers synchronous ``POST /v1/images/generations`` calls one at a
time. Per request it pairs the client's end-to-end time (request sent to last
body byte in) with the same request's ``Server-Timing`` header, and prints:

- the median of each stage the agent reports (queue, engine, transfer,
  encode, respond, ...) and of ``total``;
- the overhead: client end to end minus that request's engine time, median
  and p90 (the number issue 29 tracks), and what the stages leave
  unaccounted (``total`` minus the sum of the other stages).

CI runs it (tests/integration/test_http_overhead_bench.py) and checks only
that it ran and printed: a 2-core CI box's numbers are not a GPU host's.

    python benchmarks/http_overhead.py [--runs 20] [--size 1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from zitops.bench.agent_http import overhead_summary, parse_server_timing, percentile
from zitops.drill import AgentProcess, build_deployment, free_port


def measure(size: int, runs: int, warmup: int, job_seconds: float, route: str) -> dict[str, Any]:
    """Start an agent with the fault engine, time ``runs`` requests after ``warmup``; the summary."""
    import httpx

    root = Path(tempfile.mkdtemp(prefix="zitops-http-overhead-"))
    port = free_port()
    sets = (f"generation.width={size}", f"generation.height={size}", "generation.steps=4",
            "queue.drain_timeout_s=10", "watchdog.hot_spare=false")
    faults = {"job_seconds": job_seconds, "pixels": "noise"}
    config_path, _ = build_deployment(root, port, faults, sets)
    agent = AgentProcess(config_path, port, root / "agent.out")
    e2e: list[float] = []
    stages: list[dict[str, float]] = []
    try:
        agent.wait_ready(120.0)
        with httpx.Client(base_url=agent.url, timeout=120.0) as client:
            for i in range(warmup + runs):
                if route == "openai":
                    path, body = "/v1/images/generations", {"prompt": "overhead", "size": f"{size}x{size}",
                                                            "seed": i, "response_format": "b64_json"}
                else:
                    path, body = "/sdapi/v1/txt2img", {"prompt": "overhead", "width": size, "height": size,
                                                       "seed": i, "steps": 4}
                t0 = time.perf_counter()
                resp = client.post(path, json=body)
                elapsed = time.perf_counter() - t0
                if resp.status_code != 200:
                    raise SystemExit(f"agent answered {resp.status_code}: {resp.text[:300]}")
                if i >= warmup:
                    e2e.append(elapsed)
                    stages.append(parse_server_timing(resp.headers.get("server-timing")))
    finally:
        agent.stop()
        shutil.rmtree(root, ignore_errors=True)
    summary = overhead_summary(e2e, stages)
    summary.pop("overhead_all_ms", None)
    accounted = [sum(v for k, v in st.items() if k != "total") for st in stages]
    gaps = [(st["total"] - a) * 1000.0 for st, a in zip(stages, accounted, strict=True) if "total" in st]
    summary["unaccounted_median_ms"] = round(statistics.median(gaps), 2) if gaps else None
    summary["unaccounted_p90_ms"] = round(percentile(gaps, 0.9), 2) if gaps else None
    summary["e2e_median_ms"] = round(statistics.median(e2e) * 1000.0, 2)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Measure, print the stages and the overhead, optionally write JSON."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", type=int, default=1024, help="square image side (default 1024)")
    ap.add_argument("--job-seconds", type=float, default=0.0, help="the fault engine's time per job")
    ap.add_argument("--route", choices=("openai", "a1111"), default="openai")
    ap.add_argument("--label", default="", help="a note kept in the JSON (e.g. before/after)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    result = measure(args.size, args.runs, args.warmup, args.job_seconds, args.route)
    stages = result["stages_median_ms"]
    print(f"http overhead: {args.runs} requests, {args.size}x{args.size} noise PNG, route {args.route}, "
          f"fault engine ({args.job_seconds:g} s/job)")
    for name, ms in stages.items():
        print(f"  {name:<10} {ms:8.2f} ms (median)")
    print(f"  {'unaccnt.':<10} {result['unaccounted_median_ms']:8.2f} ms (total - sum of stages, median)")
    print(f"overhead_ms {result['overhead_ms']} (median, client e2e - engine), p90 {result['overhead_p90_ms']}; "
          f"client - server total {result.get('client_minus_server_total_ms')} ms")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "benchmark": "http_overhead", "label": args.label, "machine": platform.node(),
            "cpus": __import__("os").cpu_count(), "python": platform.python_version(),
            "args": {k: str(v) for k, v in vars(args).items()}, **result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
