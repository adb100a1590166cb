"""Scale-up that keeps pace with the queue: does a second agent, started when 100 jobs queue, help in time?

    python3 benchmarks/scaleup.py --arch full --profile designer --jobs 100 --workdir /tmp/zscale \
        --scenarios one,imported,cold --out scaleup.json                 # on a GPU
    python3 benchmarks/scaleup.py --model tiny --set engine.compile=true --set engine.compile_on_cpu=true \
        --set engine.precision=fp32 --set engine.vae_precision=fp32 --set generation.width=64 \
        --set generation.height=64 --set generation.steps=2 --jobs 10 --scenarios one,imported --out s.json  # CPU

First ``zitops warm --export`` on agent A's deployment (cold compile caches:
the cost a fresh pod pays without a bundle), then agent A starts on its warm
caches and serves one warm-up request. Each scenario then queues ``--jobs``
jobs at t=0:

- ``one``: A drains the queue alone;
- ``imported``: agent B starts at t=0 with an empty compile cache directory
  and the fleet's bundle in its ``paths.compile_bundle_dir`` (the volume);
- ``cold``: agent B starts at t=0 with nothing (an empty cache, no bundle);
- ``alone`` (run instead of the others, without agent A: the cheapest GPU
  call): agent B starts on the card alone with an empty cache and the bundle,
  then serves ``--jobs`` requests one at a time: start to /readyz, its
  start-up phases, and its first request against its steady ones.

The queue is the benchmark's own (the SQLite-free path): each agent takes a
job whenever it has fewer than ``--depth`` in flight, as agents claiming from
a shared store do, so the drain time is what a shared queue gives. Reported
per scenario: B's start to /readyz, B's first job done, the drain time, B's
start-up phases from /status (with the bundle's load and inductor's compile
counters), and B's first job against its steady jobs. On one GPU both
agents share the card: the drain time then shows sharing, not a second GPU.
Random weights: speed only, never quality.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "a ceramic coffee cup on a wooden table, natural lighting"


def _config(profile: Any, model: str, root: Path, port: int, bundles: Path | None) -> Path:
    """Agent config under ``root`` (its own state and cache), with the shared bundle directory when given."""
    from zitops.bench.agent_http import write_config

    path = write_config(profile, model, root, port, cache_dir=root / "cache", state_dir=root / "state")
    data = yaml.safe_load(path.read_text())
    data["paths"]["compile_bundle_dir"] = str(bundles) if bundles else str(root / "no-bundles")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _warm_export(config: Path, bundle: Path, timeout_s: float) -> dict[str, Any]:
    """``zitops warm --export`` in a child (it spawns the engine); its JSON report and wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "from zitops.cli import main; main()", "warm", "--config",
                           str(config), "--export", str(bundle), "--json", "--timeout", str(timeout_s)],
                          capture_output=True, text=True, check=False, timeout=timeout_s + 60)
    if proc.returncode:
        raise SystemExit(f"zitops warm failed: {proc.stderr.strip()[-2000:]}")
    report: dict[str, Any] = json.loads(proc.stdout)
    report["wall_s"] = round(time.perf_counter() - t0, 2)
    return report


def _post(client: Any, url: str, size: str, seed: int, stages: list[dict[str, float]] | None = None) -> float:
    """One request's seconds end to end; its Server-Timing stages (ms) appended to ``stages`` when given."""
    from zitops.bench.agent_http import parse_server_timing

    body = {"prompt": PROMPT, "size": size, "response_format": "b64_json", "seed": seed}
    t0 = time.perf_counter()
    resp = client.post(f"{url}/v1/images/generations", json=body)
    resp.raise_for_status()
    elapsed = time.perf_counter() - t0
    if stages is not None:
        timing = parse_server_timing(resp.headers.get("server-timing"))
        stages.append({"e2e": round(elapsed * 1000.0, 2), **{k: round(v * 1000.0, 2) for k, v in timing.items()}})
    return elapsed


def _serve(name: str, url: str, jobs: queue.Queue[int], size: str, t0: float, done: list[dict[str, Any]],
           lock: threading.Lock) -> None:
    """One in-flight slot of one agent: take the next job until the queue is empty."""
    import httpx

    with httpx.Client(timeout=900) as client:
        while True:
            try:
                n = jobs.get_nowait()
            except queue.Empty:
                return
            started = time.perf_counter() - t0
            seconds = _post(client, url, size, n)
            with lock:
                done.append({"agent": name, "job": n, "start_s": round(started, 3),
                             "end_s": round(time.perf_counter() - t0, 3), "seconds": round(seconds, 3)})


def _status_startup(url: str) -> Any:
    import httpx

    workers = httpx.get(f"{url}/status", timeout=30).json().get("workers") or [{}]
    return workers[0].get("startup")


def run_queue(a_url: str, size: str, jobs: int, depth: int, b: dict[str, Any] | None) -> dict[str, Any]:
    """Queue ``jobs`` at t=0; A serves at once, B (``{"config", "port"}``) starts at t=0 and joins when ready."""
    from zitops.bench.agent_http import running_agent

    pending: queue.Queue[int] = queue.Queue()
    for n in range(jobs):
        pending.put(n)
    done: list[dict[str, Any]] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=_serve, args=("A", a_url, pending, size, t0, done, lock))
               for _ in range(depth)]
    for t in threads:
        t.start()
    out: dict[str, Any] = {"jobs": jobs, "depth": depth}
    if b is not None:
        with running_agent(b["config"], b["port"], ready_timeout_s=b["ready_timeout_s"]) as (b_url, _):
            out["b_ready_s"] = round(time.perf_counter() - t0, 2)
            out["b_startup"] = _status_startup(b_url)
            b_threads = [threading.Thread(target=_serve, args=("B", b_url, pending, size, t0, done, lock))
                         for _ in range(depth)]
            for t in b_threads:
                t.start()
            for t in threads + b_threads:
                t.join()
            if not any(j["agent"] == "B" for j in done):  # the queue drained before B was ready
                out["b_after_drain_first_job_s"] = round(_post_first(b_url, size), 3)
    for t in threads:
        t.join()
    out["drain_s"] = round(max(j["end_s"] for j in done), 2)
    out["served"] = {name: sum(1 for j in done if j["agent"] == name) for name in ("A", "B")}
    mine = sorted((j for j in done if j["agent"] == "B"), key=lambda j: j["end_s"])
    if mine:
        out["b_first_job_done_s"] = mine[0]["end_s"]
        out["b_first_job_seconds"] = mine[0]["seconds"]
        if len(mine) > 2:
            out["b_steady_median_s"] = round(statistics.median(j["seconds"] for j in mine[2:]), 3)
    a_jobs = [j["seconds"] for j in done if j["agent"] == "A"]
    out["a_median_s"] = round(statistics.median(a_jobs), 3) if a_jobs else None
    out["timeline"] = sorted(done, key=lambda j: j["end_s"])
    return out


def run_alone(config: Path, port: int, size: str, jobs: int, ready_timeout_s: float) -> dict[str, Any]:
    """Agent B alone on an empty cache with the bundle: start to /readyz, then ``jobs`` requests one at a time."""
    import httpx

    from zitops.bench.agent_http import running_agent

    t0 = time.perf_counter()
    with running_agent(config, port, ready_timeout_s=ready_timeout_s) as (url, _):
        out: dict[str, Any] = {"b_ready_s": round(time.perf_counter() - t0, 2), "b_startup": _status_startup(url)}
        stages: list[dict[str, float]] = []
        with httpx.Client(timeout=900) as client:
            seconds = [round(_post(client, url, size, n, stages), 3) for n in range(max(jobs, 2))]
        out["requests_ms"] = stages  # each request's Server-Timing: where the first one's extra goes
    out["first_request_s"], out["requests_s"] = seconds[0], seconds
    out["steady_median_s"] = round(statistics.median(seconds[1:]), 3)
    out["first_over_steady"] = round(seconds[0] / out["steady_median_s"], 2)
    return out


def _post_first(url: str, size: str) -> float:
    import httpx

    with httpx.Client(timeout=900) as client:
        return _post(client, url, size, 10_000)


def main() -> None:
    """Run the scenarios; print and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="designer")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--depth", type=int, default=2, help="jobs in flight per agent")
    ap.add_argument("--scenarios", default="one,imported,cold")
    ap.add_argument("--workdir", default="/tmp/zscale")
    ap.add_argument("--ready-timeout", type=float, default=600)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from zitops.bench.agent_http import free_port, running_agent
    from zitops.engine.loader import FULL_RANDOM
    from zitops.profile import load_profile

    # No hot spares: a second copy per agent would share the card with the scenario's jobs.
    profile = load_profile(args.profile, ["watchdog.hot_spare=false", *args.set])
    model = FULL_RANDOM if args.arch == "full" else args.model
    size = f"{profile.generation.width}x{profile.generation.height}"
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    bundles = work / "fleet-bundles"
    result: dict[str, Any] = {"profile": args.profile, "sets": args.set, "model": model, "size": size,
                              "date": time.strftime("%Y-%m-%d"), "scenarios": {}}

    def save() -> None:
        Path(args.out).write_text(json.dumps(result, indent=1), "utf-8")

    a_port = free_port()
    a_config = _config(profile, model, work / "a", a_port, bundles)
    result["warm_export"] = _warm_export(a_config, work / "fleet.zcc", args.ready_timeout)
    print(json.dumps({"warm_export": {k: v for k, v in result["warm_export"].items() if k != "warmup"}}), flush=True)
    save()
    if args.scenarios == "alone":
        b_port = free_port()
        result["scenarios"]["alone"] = run_alone(_config(profile, model, work / "b-alone", b_port, bundles),
                                                 b_port, size, args.jobs, args.ready_timeout)
        print(json.dumps(result["scenarios"]["alone"]), flush=True)
        save()
        return
    with running_agent(a_config, a_port, ready_timeout_s=args.ready_timeout) as (a_url, a_ready_s):
        result["a_ready_s"] = round(a_ready_s, 2)
        result["a_startup"] = _status_startup(a_url)
        result["a_first_request_s"] = round(_post_first(a_url, size), 3)
        for name in [s for s in args.scenarios.split(",") if s]:
            b = None
            if name != "one":
                b_port = free_port()
                b_config = _config(profile, model, work / f"b-{name}", b_port,
                                   bundles if name == "imported" else None)
                b = {"config": b_config, "port": b_port, "ready_timeout_s": args.ready_timeout}
            report = run_queue(a_url, size, args.jobs, args.depth, b)
            result["scenarios"][name] = report
            print(json.dumps({name: {k: v for k, v in report.items() if k != "timeline"}}), flush=True)
            save()


if __name__ == "__main__":
    main()
