"""Context parallel (engine.parallel) against one GPU: one image's engine time, and the same pixels (issue 30).

For each ``--kinds`` entry (``1`` is the one-GPU worker; ``ulysses2``, ``ring2``,
``ring4`` ... a group) this starts a real worker as the pool does (the spawned
``worker_main``; a group's worker spawns its other ranks), runs ``--warmup``
jobs (compile, cuDNN), then ``--runs`` jobs of the same request, and records
per job rank 0's engine seconds (``Result.engine_s``: the request to every
rank, the denoising, the decode) and the engine's own figure (``info.engine_seconds``).
Each group's first image is compared with the one-GPU worker's (PSNR, dB).

    python benchmarks/parallel.py --model full-random --profile designer --kinds 1 ulysses2 ring2 --out bench-out/parallel.json
    python benchmarks/parallel.py --model tiny --cpu --size 64 --steps 2 --runs 2 --warmup 1 --out /tmp/par.json  (CPU dry run)

Needs as many GPUs as the largest group (benchmarks/device.sh ``parallel``,
a 2-GPU kind). The target (docs/parallel.md): designer bf16 1024² on 2 GPUs
<= 0.50 s in the engine.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zitops.agent.workers.spawn import sigkill, start_child  # noqa: E402
from zitops.config import config_from_mapping, config_to_dict  # noqa: E402
from zitops.engine.request import request_from_profile  # noqa: E402
from zitops.profile import load_profile  # noqa: E402
from zitops.worker import pixel_shm  # noqa: E402
from zitops.worker.process import worker_main  # noqa: E402
from zitops.worker.protocol import Failure, Job, RawImage, Ready, Result, Shutdown  # noqa: E402


def parse_kind(kind: str) -> tuple[int, str]:
    """``1`` -> (1, "ulysses"); ``ring4`` -> (4, "ring")."""
    if kind == "1":
        return 1, "ulysses"
    name = kind.rstrip("0123456789")
    return int(kind[len(name):]), name


def expect(conn: Any, kind: type, deadline_s: float) -> Any:
    """The worker's next message of ``kind``; raises on a Failure or at the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if conn.poll(1.0):
            msg = conn.recv()
            if isinstance(msg, Failure):
                raise RuntimeError(f"{msg.exc_type}: {msg.message}\n{msg.traceback}")
            if isinstance(msg, kind):
                return msg
    raise TimeoutError(f"no {kind.__name__} within {deadline_s} s")


def pixels(raw: RawImage) -> bytes:
    """A RawImage's bytes, from the pipe or /dev/shm."""
    if not raw.shm:
        return bytes(raw.data)
    mapped = pixel_shm.attach(raw.shm, raw.nbytes)
    try:
        return bytes(mapped)
    finally:
        mapped.close()


def psnr(a: bytes, b: bytes) -> float:
    """PSNR of two 8-bit pixel buffers of one size, in dB."""
    import numpy as np

    x, y = np.frombuffer(a, np.uint8).astype(np.float64), np.frombuffer(b, np.uint8).astype(np.float64)
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run_kind(args: argparse.Namespace, kind: str, workdir: Path) -> dict[str, Any]:
    """One worker of ``kind``: its start-up, per-job seconds and first image."""
    degree, name = parse_kind(kind)
    sets = list(args.set) + [f"engine.parallel.degree={degree}", f"engine.parallel.kind={name}"]
    profile = load_profile(args.profile, sets)
    data = {"profile": profile.model_dump(mode="json"), "model": args.model,
            "paths": {k: str(workdir / k) for k in ("state_dir", "log_dir", "output_dir")} |
                     {"cache_dir": args.cache_dir or str(workdir / "cache")}}
    config = config_from_mapping(data, "bench config")
    gpu = None if args.cpu else args.gpus[0]
    visible = None if args.cpu or degree == 1 else ",".join(map(str, args.gpus[:degree]))
    started = time.monotonic()
    proc, conn = start_child(multiprocessing.get_context("spawn"), worker_main, f"bench-{kind}",
                             ("w0", gpu, 0, config_to_dict(config), time.time(), None, None, None, visible))
    try:
        ready: Ready = expect(conn, Ready, args.limit)
        start_s = time.monotonic() - started
        request = request_from_profile(profile, args.prompt, seeds=(args.seed,), width=args.size,
                                       height=args.size, steps=args.steps)
        engine_s, inner_s, first = [], [], b""
        for n in range(args.warmup + args.runs):
            conn.send(Job(job_id=f"{kind}-{n}", request=request.to_dict()))
            result: Result = expect(conn, Result, args.limit)
            if n == 0:
                first = pixels(result.images[0])
            elif n >= args.warmup:
                engine_s.append(result.engine_s)
                inner_s.append(float(result.info["engine_seconds"]))
            print(f"{kind} job {n}: engine {result.engine_s:.3f} s", file=sys.stderr)
        conn.send(Shutdown())
        proc.join(60)
    finally:
        sigkill(proc)
        proc.join(10)
    return {"kind": kind, "degree": degree, "start_s": round(start_s, 2),
            "effective": ready.describe.get("effective", {}), "engine_s": engine_s, "engine_seconds": inner_s,
            "engine_s_median": statistics.median(engine_s), "first_image": first}


def main() -> None:
    """Run every kind, compare images with the first kind's, print and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="full-random")
    ap.add_argument("--profile", default="designer")
    ap.add_argument("--set", action="append", default=[], help="profile override (repeatable)")
    ap.add_argument("--kinds", nargs="+", default=["1", "ulysses2", "ring2"])
    ap.add_argument("--gpus", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 7])
    ap.add_argument("--cpu", action="store_true", help="a CPU dry run (gloo; ring needs CUDA)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--prompt", default="a red fox in the snow, studio photo")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--limit", type=float, default=600.0, help="seconds allowed for start-up or one job")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="zitops-parallel-") as tmp:
        for kind in args.kinds:
            try:
                results.append(run_kind(args, kind, Path(tmp) / kind))
            except Exception as exc:  # one failing kind (e.g. compile under context parallel) leaves the others
                results.append({"kind": kind, "error": f"{type(exc).__name__}: {str(exc)[:2000]}"})
    base = next((r["first_image"] for r in results if r.get("degree") == 1 and "first_image" in r), None)
    for r in results:
        image = r.pop("first_image", None)
        if base is not None and image is not None and r["degree"] > 1:
            r["psnr_vs_1_db"] = round(psnr(base, image), 2)
    device = "cpu"
    if not args.cpu:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    import diffusers
    import torch

    report = {"benchmark": "parallel", "model": args.model, "profile": args.profile, "size": args.size,
              "steps": args.steps, "sets": args.set, "device": device, "torch": torch.__version__,
              "diffusers": diffusers.__version__, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    for r in results:
        print(f"{r['kind']:>10}: " + (f"engine median {r['engine_s_median']:.3f} s  start {r['start_s']} s"
                                      + (f"  PSNR vs 1 GPU {r['psnr_vs_1_db']} dB" if "psnr_vs_1_db" in r else "")
                                      if "error" not in r else r["error"].splitlines()[0]))


if __name__ == "__main__":
    main()
