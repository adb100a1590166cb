"""Does torch's compile-cache bundle ("mega-cache") shorten a worker's first job?

    python3 benchmarks/compile_cache.py --model full-random --device cuda --out cc.json   # on a GPU
    python3 benchmarks/compile_cache.py --model tiny --device cpu --out cc.json           # CI-sized

Each scenario runs in a fresh interpreter, as a restarted worker would: the
engine is set up with ``engine.compile`` on and one generation is timed (the
compile is lazy, so it lands in that first generation). Scenarios, in order:

1. ``cold``: an empty inductor cache directory; saves the bundle afterwards;
2. ``warm``: the same directory again (inductor's FX/AOT caches, what the engine already does);
3. ``bundle_empty_dir``: an empty directory, the bundle loaded before compiling;
4. ``bundle_warm_dir``: the warm directory plus the bundle.

The bundle is loaded right after ``configure_compile_cache`` points inductor
at the engine's directory (loading it earlier fills the default directory
and is never hit). Prints one JSON line per scenario and writes them all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def one(model: str, device: str, cache_dir: str, bundle: str, mode: str, size: int, steps: int) -> dict:
    """One worker-like start in this process; returns its timings."""
    t0 = time.perf_counter()
    from zitops.engine.diffusers_engine import DiffusersEngine
    from zitops.engine.precision.compile_cache import (
        configure_compile_cache,
        load_artifacts,
        save_artifacts,
    )
    from zitops.engine.request import GenerationRequest
    from zitops.profile import load_profile

    imports_s = time.perf_counter() - t0
    settings = load_profile("designer", ["engine.compile=true"]).engine
    engine = DiffusersEngine(settings, model, cache_dir=cache_dir, compile_on_cpu=True)
    t1 = time.perf_counter()
    loaded = None
    if mode.startswith("bundle"):
        configure_compile_cache(cache_dir)
        loaded = load_artifacts(bundle)
    load_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    engine.setup(device)
    setup_s = time.perf_counter() - t2
    req = GenerationRequest(prompt="a red fox in the snow", seeds=(1,), width=size, height=size, steps=steps)
    t3 = time.perf_counter()
    engine.generate(req, None)
    first_s = time.perf_counter() - t3
    t4 = time.perf_counter()
    engine.generate(req, None)
    second_s = time.perf_counter() - t4
    saved = save_artifacts(bundle) if mode == "cold" else None
    from torch._dynamo.utils import counters

    hits = {k: v for k, v in counters["inductor"].items() if "cache" in k}  # did the bundle's entries hit?
    return {"scenario": mode, "inductor_cache": hits, "imports_s": round(imports_s, 2), "bundle_load_s": round(load_s, 2),
            "bundle_loaded": loaded, "setup_s": round(setup_s, 2), "first_job_s": round(first_s, 2),
            "second_job_s": round(second_s, 3), "bundle_saved": saved}


def main() -> None:
    """Run the four scenarios, each in a fresh interpreter."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=0, help="image side; default 64 on the CPU, 1024 on CUDA")
    ap.add_argument("--steps", type=int, default=0, help="default 2 on the CPU, 8 on CUDA")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--one", nargs=3, metavar=("MODE", "CACHE_DIR", "BUNDLE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    size = a.size or (64 if a.device == "cpu" else 1024)
    steps = a.steps or (2 if a.device == "cpu" else 8)
    if a.one:
        print(json.dumps(one(a.model, a.device, a.one[1], a.one[2], a.one[0], size, steps)), flush=True)
        return
    work = Path(a.workdir or tempfile.mkdtemp(prefix="zitops-cc-"))
    bundle = str(work / "bundle.bin")
    plan = [("cold", work / "warm"), ("warm", work / "warm"), ("bundle_empty_dir", work / "empty"),
            ("bundle_warm_dir", work / "warm")]
    results = []
    for mode, cache_dir in plan:
        cmd = [sys.executable, __file__, "--model", a.model, "--device", a.device, "--size", str(size),
               "--steps", str(steps), "--one", mode, str(cache_dir), bundle]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("{")), None)
        result = json.loads(line) if line else {"scenario": mode, "error": out.stderr.strip().splitlines()[-3:]}
        print(json.dumps(result), flush=True)
        results.append(result)
    if a.out:
        Path(a.out).write_text(json.dumps({"model": a.model, "device": a.device, "size": size, "steps": steps,
                                           "results": results}, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
