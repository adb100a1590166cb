"""Where the worker's engine loses time against the same engine in one process (issue 29, item 1).

The 2026-12-07 H100 run measured the worker's engine call at 910.9 ms and
the in-process engine (``zitops bench``'s engine path) at 873 ms. This runs
the same request three ways, each in a fresh spawned process with its own
CUDA context, so only the path differs:

- ``engine``: ``zitops bench``'s engine path: ``DiffusersEngine`` built from the
  profile, ``engine.generate(request)``;
- ``factory``: what the worker builds (``device_environment``, the config,
  ``create_engine``), ``engine.generate(request)`` with no step hook;
- ``worker``: the worker's own ``run_job`` with its ``JobSteering`` step hook
  and Progress messages over a real pipe that the parent process drains,
  plus a heartbeat thread sending on the same pipe, as in the worker.

For each: the median seconds per call over ``--runs`` after ``--warmup``
calls, the process settings that could differ (torch threads, allocator
config, TF32 and cuDNN flags, CUDA environment), and a torch.profiler trace
of ``--profile-runs`` calls (a gzipped Chrome trace, plus the top operators
by self CUDA and self CPU time). The difference between two paths'
operator tables, and the settings that differ, name the cause.

    python benchmarks/worker_profile.py --model full-random --profile designer --out bench-out   (GPU)
    python benchmarks/worker_profile.py --model tiny --runs 2 --warmup 1 --out /tmp/wp           (CPU dry run)
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

PATHS = ("engine", "factory", "worker")


def settings() -> dict[str, Any]:
    """The process settings that change kernel choice or host overhead."""
    import torch

    out: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("CUDA", "PYTORCH", "OMP", "MKL", "TORCH",
                                                                     "NCCL", "ZITOPS"))},
        "grad_enabled": torch.is_grad_enabled(), "matmul_precision": torch.get_float32_matmul_precision(),
    }
    if torch.cuda.is_available():
        out.update(tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   bf16_reduced=torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
                   device=torch.cuda.get_device_name(0))
    return out


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def child(path: str, args: dict[str, Any], conn: Any, result_file: str) -> None:
    """One path in a fresh process: build, warm up, time, profile; the result as JSON in ``result_file``."""
    from zitops.worker.preimport import device_environment

    device_environment(0 if args["gpu"] else None)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from zitops.config import config_from_mapping
    from zitops.engine.request import request_from_profile
    from zitops.profile import load_profile

    prof = load_profile(args["profile"], args["set"])
    device = "cuda:0" if args["gpu"] else "cpu"
    req = request_from_profile(prof, "a lighthouse at dusk, film photo", seed=7)
    t0 = time.perf_counter()
    if path == "engine":
        from zitops.engine.diffusers_engine import DiffusersEngine

        torch.manual_seed(0)
        engine: Any = DiffusersEngine(prof.engine, args["model"], state_dir=args["work"], cache_dir=args["cache"])
    else:
        from zitops.engine.factory import create_engine

        config = config_from_mapping({"profile": prof.model_dump(mode="json"), "model": args["model"],
                                      "paths": {"state_dir": args["work"], "log_dir": args["work"] + "/log",
                                                "output_dir": args["work"] + "/out", "cache_dir": args["cache"]}},
                                     "worker_profile")
        engine = create_engine(config, incarnation=1)
    engine.setup(device)
    setup_s = time.perf_counter() - t0
    call: Any
    if path == "worker":
        from zitops.worker.process import _Sender, run_job
        from zitops.worker.protocol import Heartbeat, Job
        from zitops.worker.steering import JobSteering

        sender = _Sender(conn)
        pending: list[Any] = []

        def beats() -> None:
            while True:
                sender.send(Heartbeat(worker_id="w0", sent_at=time.time()))
                time.sleep(1.0)

        threading.Thread(target=beats, daemon=True).start()
        counter = iter(range(10**6))

        def call() -> Any:
            job = Job(job_id=f"j{next(counter)}", request=req.to_dict())
            return run_job(engine, job, JobSteering(conn, sender.send, job.job_id, pending))
    else:
        def call() -> Any:
            return engine.generate(req)
    for _ in range(args["warmup"]):
        call()
    _sync()
    times = []
    for _ in range(args["runs"]):
        t = time.perf_counter()
        call()
        _sync()
        times.append(time.perf_counter() - t)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args["gpu"] else [])
    with profile(activities=activities, record_shapes=False) as p:
        for _ in range(args["profile_runs"]):
            call()
        _sync()
    out = Path(args["out"])
    trace = out / f"worker-profile-{path}.trace.json"
    p.export_chrome_trace(str(trace))
    with trace.open("rb") as src, gzip.open(str(trace) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    trace.unlink()
    key = "self_cuda_time_total" if args["gpu"] else "self_cpu_time_total"
    table = p.key_averages().table(sort_by=key, row_limit=30)
    (out / f"worker-profile-{path}.txt").write_text(table)
    cpu_table = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    Path(result_file).write_text(json.dumps({
        "path": path, "setup_s": round(setup_s, 2), "times_s": [round(t, 4) for t in times],
        "median_s": round(statistics.median(times), 4), "settings": settings(),
        "effective": {k: str(v) for k, v in dict(getattr(engine, "effective", {})).items()},
        "top_ops": table.splitlines()[:40], "top_cpu_ops": cpu_table.splitlines()[:30]}))
    conn.send(None)


def main(argv: list[str] | None = None) -> int:
    """Run each path in its own spawned process; print and write the comparison."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="full-random")
    ap.add_argument("--profile", default="designer")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--profile-runs", type=int, default=1)
    ap.add_argument("--cache-dir", default="/tmp/zcache")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    args = ap.parse_args(argv)
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "worker-profile-work"
    common = {"model": args.model, "profile": args.profile, "set": args.set, "runs": args.runs,
              "warmup": args.warmup, "profile_runs": args.profile_runs, "cache": args.cache_dir,
              "work": str(work), "out": str(out), "gpu": torch.cuda.is_available()}
    del torch  # the children import it themselves, after their device environment
    ctx = mp.get_context("spawn")
    results: dict[str, Any] = {}
    for path in args.paths.split(","):
        parent, child_end = ctx.Pipe(duplex=True)
        result_file = out / f"worker-profile-{path}.json"
        proc = ctx.Process(target=child, args=(path, common, child_end, str(result_file)), daemon=True)
        proc.start()
        child_end.close()
        messages = 0
        while proc.is_alive() or parent.poll():
            if parent.poll(0.5):  # drain Progress and heartbeats, as the agent's pool does
                try:
                    if parent.recv() is None:
                        break
                    messages += 1
                except EOFError:
                    break
        proc.join(60)
        if result_file.is_file():
            results[path] = {**json.loads(result_file.read_text()), "messages": messages}
            print(f"{path:<8} median {results[path]['median_s'] * 1000:8.1f} ms  runs {results[path]['times_s']}")
        else:
            results[path] = {"error": f"exited {proc.exitcode}"}
            print(f"{path:<8} failed: exit code {proc.exitcode}")
    shutil.rmtree(work, ignore_errors=True)
    base = results.get("engine", {}).get("settings", {})
    for path, r in results.items():
        diff = {k: (base.get(k), v) for k, v in r.get("settings", {}).items() if base.get(k) != v}
        if path != "engine" and diff:
            print(f"{path}: settings that differ from engine: {diff}")
    (out / "worker-profile.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
