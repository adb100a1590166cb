"""One worker per GPU: images/min with one worker against one worker per listed GPU (issue 30).

A real ``zitops agent`` on loopback, started twice with one shared cache directory:

1. ``gpus: [FIRST]``: one worker. Its warm-up compiles into the cache (cold the first time).
2. ``gpus: [all of --gpus]``: one worker per GPU. They find the first phase's graphs in the
   cache, so the workers do not compile at once here (tests/gpu/test_gpu_workers.py covers
   two cold compiles into one cache at the same time).

Each phase sends ``--warmup`` requests per worker, then ``--jobs-per-worker`` x workers
requests of the profile's batch (``n``) from two closed-loop clients per worker, so a worker
always has a job waiting when it finishes one. ``images_per_min`` is the images completed over
the measured wall time; the ratio of the last phase to the first is the scaling, the target is
1.9x on two GPUs at the ecommerce profile. Hot spares are off (a spare building on a serving
GPU would be measured too); standby spares stay (they only import, on the CPU). The responses
are JPEG (``--format``), so the agent's PNG encoding of noise stays out of the GPU's number.

    python benchmarks/multi_gpu.py --model full-random --profile ecommerce --gpus 0,1 --cache-dir /tmp/zcache-mg
    python benchmarks/multi_gpu.py --fault --gpus 0,1 --size 256      (CPU smoke: fault engine, two GPU slots)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from zitops.bench.agent_http import free_port, running_agent, write_config
from zitops.bench.closed_loop import closed_loop
from zitops.profile import Profile, load_profile

TARGET = 1.9
"""The scaling the issue asks of two workers on two GPUs (a target, not a measurement)."""


def phase(profile: Profile, args: argparse.Namespace, gpus: list[int], work: Path,
          engine: dict[str, Any] | None) -> dict[str, Any]:
    """Start an agent on ``gpus``, warm every worker, measure; the phase's numbers."""
    port = free_port()
    name = "gpus-" + "-".join(map(str, gpus))
    config = write_config(profile, args.model, work / name, port, cache_dir=Path(args.cache_dir or work / "cache"),
                          state_dir=work / "state", engine=engine, gpus=gpus)
    g = profile.generation
    body = {"prompt": "a product photo of a leather bag on a white background", "n": g.batch,
            "size": f"{g.width}x{g.height}", "response_format": "b64_json", "output_format": args.format}
    workers = len(gpus)
    clients = 2 * workers
    requests = args.jobs_per_worker * workers
    t0 = time.perf_counter()
    with running_agent(config, port, ready_timeout_s=args.ready_timeout) as (url, ready_s):
        # Every worker ready: /readyz says ready once one is.
        deadline = time.monotonic() + args.ready_timeout
        with httpx.Client(timeout=10.0) as client:
            while time.monotonic() < deadline:
                ws = [w for w in client.get(f"{url}/status").json()["workers"] if w.get("role") == "worker"]
                if len(ws) == workers and all(w["state"] == "ready" for w in ws):
                    break
                time.sleep(0.2)
            else:
                raise SystemExit(f"{name}: not every worker was ready after {args.ready_timeout:.0f} s")
        all_ready_s = round(time.perf_counter() - t0, 2)  # the agent's start to every worker ready
        warm, _ = closed_loop(url, body, clients, args.warmup * workers, 600.0, 9000)
        results, wall = closed_loop(url, body, clients, requests, 600.0, 0)
        with httpx.Client(timeout=10.0) as client:
            status = client.get(f"{url}/status").json()
    done = [s for code, s in results if code == 200]
    images = len(done) * g.batch
    per_worker = {w["id"]: w["jobs_total"] for w in status["workers"] if w.get("role") == "worker"}
    return {"gpus": gpus, "workers": workers, "clients": clients, "ready_s": round(ready_s, 2),
            "all_ready_s": all_ready_s, "warmup_ok": sum(1 for code, _ in warm if code == 200),
            "requests": requests, "completed": len(done), "failed": requests - len(done), "images": images,
            "wall_s": round(wall, 2), "images_per_min": round(images / wall * 60.0, 1) if wall > 0 else None,
            "p50_s": round(statistics.median(done), 3) if done else None, "jobs_per_worker": per_worker,
            "startup": {w["id"]: (w.get("startup") or {}).get("total_s") for w in status["workers"]
                        if w.get("role") == "worker"}}


def main(argv: list[str] | None = None) -> int:
    """One worker, then one per listed GPU; print both and the ratio, write JSON."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="full-random", help="full-random (GPU), tiny (CPU)")
    ap.add_argument("--profile", default="ecommerce")
    ap.add_argument("--set", action="append", default=[], help="profile override KEY=VALUE (repeatable)")
    ap.add_argument("--gpus", default="0,1", help="the GPUs of the last phase; the first phase uses the first")
    ap.add_argument("--fault", action="store_true", help="the fault engine's synthetic pixels (a CPU smoke)")
    ap.add_argument("--job-seconds", type=float, default=0.5, help="--fault: the engine's seconds per image")
    ap.add_argument("--size", type=int, default=None, help="square side; default: the profile's size")
    ap.add_argument("--jobs-per-worker", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2, help="requests per worker before measuring")
    ap.add_argument("--format", default="jpeg", choices=("jpeg", "png", "webp"))
    ap.add_argument("--cache-dir", default=None, help="shared by both phases (default: a new one)")
    ap.add_argument("--ready-timeout", type=float, default=300.0)
    ap.add_argument("--label", default="multi-gpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    gpus = [int(p) for p in args.gpus.split(",")]
    sets = [*args.set, "watchdog.hot_spare=false", f"queue.depth={4 * len(gpus) + 4}", "queue.job_timeout_s=600"]
    if args.size:
        sets += [f"generation.width={args.size}", f"generation.height={args.size}"]
    profile = load_profile(args.profile, sets)
    engine = ({"kind": "faulty", "faults": {"inner": "synthetic", "pixels": "noise", "job_seconds": args.job_seconds}}
              if args.fault else None)
    work = Path(tempfile.mkdtemp(prefix="zitops-multi-gpu-"))
    rows = [phase(profile, args, phase_gpus, work, engine) for phase_gpus in ([gpus[0]], gpus)]
    one_w, all_w = rows[0]["images_per_min"], rows[-1]["images_per_min"]
    ratio = round(all_w / one_w, 3) if one_w and all_w else None
    g = profile.generation
    engine_label = f"fault engine ({args.job_seconds:g} s per image)" if args.fault else f"model {args.model}"
    print(f"multi-gpu: {engine_label}, profile {profile.name}, {g.width}x{g.height}, {g.steps} steps, batch {g.batch}")
    print(f"{'workers':>7} {'gpus':>8} {'images':>6} {'wall s':>7} {'img/min':>8} {'p50 s':>7}  jobs per worker")
    for r in rows:
        print(f"{r['workers']:>7} {','.join(map(str, r['gpus'])):>8} {r['images']:>6} {r['wall_s']:>7} "
              f"{r['images_per_min']!s:>8} {r['p50_s']!s:>7}  {r['jobs_per_worker']}")
    print(f"scaling {len(gpus)} workers / 1: {ratio}x (target for 2 GPUs: {TARGET}x)")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "benchmark": "multi_gpu", "label": args.label, "engine": engine_label, "machine": platform.node(),
            "profile": profile.name, "size": f"{g.width}x{g.height}", "steps": g.steps, "batch": g.batch,
            "phases": rows, "scaling": ratio, "target": TARGET,
            "args": {k: str(v) for k, v in vars(args).items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
