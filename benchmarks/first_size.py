"""Where does the first request at a size spend its extra time? Phases of the 1st and 2nd request per size.

    python3 benchmarks/first_size.py --arch full --plan new --cache-dir DIR --out first-size.json

One process, the designer engine in it (no agent): set-up, the warm-up
(``--plan old``: the profile's size then a second size, no after-warm-up
step, cuDNN autotuning left on; ``--plan new``: zitops' warm-up as it is now),
then each of ``--sizes`` twice. Every request records its engine seconds, the
text encoding, each denoising step and the VAE decode (each closed by a CUDA
sync), and what dynamo and inductor counted meanwhile (a recompile, an FX
graph cache hit). Then the other cuDNN setting for ``--flip-sizes`` (new
sizes, twice each, plus the profile's size once), a prompt long enough for a
new text bucket, and a torch.profiler table of the first and second request
at ``--profile-size``. Random weights: speed only, never image quality.

``--trace-first`` instead profiles, right after the warm-up (the worker's
state at Ready), the first and the second request at the profile's own size,
as a job runs them (a step hook like the worker's, no syncs between steps),
and prints the ops whose self CPU and self CUDA times differ most between
the two, with dynamo's counters for each; ``--trace-dir`` keeps both
chrome traces (gzipped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LONG_PROMPT = ", ".join(["a red fox in fresh snow under a pale winter sky"] * 9)
"""About 100 tokens with the chat template: the 128-token text bucket, which no warm-up prompt reaches."""


class PhaseClock:
    """Wraps the engine's text encoding and decode, and takes each step's end, every mark after a sync."""

    def __init__(self, engine: Any) -> None:
        import torch

        self.cuda = engine.device.startswith("cuda")
        self.sync = torch.cuda.synchronize if self.cuda else (lambda: None)
        self.marks: list[tuple[str, float]] = []
        pipe = engine.pipe
        encode, decode = pipe.encode_prompt, engine._decode

        def timed_encode(*args: Any, **kwargs: Any) -> Any:
            self._mark("text_start")
            out = encode(*args, **kwargs)
            self._mark("text_end")
            return out

        def timed_decode(latents: Any, free_hooks: bool = True) -> Any:
            self._mark("decode_start")
            out = decode(latents, free_hooks)
            self._mark("decode_end")
            return out

        pipe.encode_prompt = timed_encode
        engine._decode = timed_decode

    def _mark(self, name: str) -> None:
        self.sync()
        self.marks.append((name, time.perf_counter()))

    def step(self, step: int, total: int) -> None:
        """The engine's progress callback: a mark at the end of each step."""
        self._mark(f"step{step}")

    def phases(self, started: float) -> dict[str, Any]:
        """The marks of one request as durations."""
        at = dict(self.marks)
        steps = sorted((int(k[4:]), v) for k, v in self.marks if k.startswith("step"))
        out: dict[str, Any] = {"before_text_s": round(at["text_start"] - started, 4),
                               "text_s": round(at["text_end"] - at["text_start"], 4)}
        prev = at["text_end"]
        out["steps_s"] = []
        for _, t in steps:
            out["steps_s"].append(round(t - prev, 4))
            prev = t
        out["decode_s"] = round(at["decode_end"] - at["decode_start"], 4)
        return out


def _counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {f"{group}.{key}": int(n) for group, c in counters.items() for key, n in c.items()
            if group in ("stats", "inductor", "aot_autograd", "frames", "recompiles")}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def main() -> None:
    """Run the probe."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="designer")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--plan", choices=("old", "new"), default="new")
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--sizes", default="1024x1024,768x1344,1344x768")
    ap.add_argument("--flip-sizes", default="1152x896,896x1152")
    ap.add_argument("--profile-size", default="1280x768", help="empty: no torch.profiler run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--trace-first", action="store_true",
                    help="only profile the 1st and 2nd request at the profile's size after the warm-up")
    ap.add_argument("--trace-dir", default="", help="with --trace-first: write the chrome traces here (gzipped)")
    ap.add_argument("--no-pgo", action="store_true",
                    help="ignore dynamo's saved automatic-dynamic profile: compile static first, as a cold cache does")
    args = ap.parse_args()

    t_import = time.perf_counter()
    import torch

    from zitops.engine.diffusers_engine import DiffusersEngine
    from zitops.engine.loader import FULL_RANDOM
    from zitops.engine.request import request_from_profile
    from zitops.profile import load_profile
    from zitops.worker.warmup import run_warmup, warmup_plan

    imports_s = time.perf_counter() - t_import
    if args.no_pgo and hasattr(torch._dynamo.config, "automatic_dynamic_local_pgo"):
        torch._dynamo.config.automatic_dynamic_local_pgo = False
    profile = load_profile(args.profile, args.set)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = FULL_RANDOM if args.arch == "full" else args.model
    engine = DiffusersEngine(profile.engine, model, cache_dir=args.cache_dir)
    t0 = time.perf_counter()
    engine.setup(device)
    setup_s = time.perf_counter() - t0
    plan = warmup_plan(profile, 64, 2048)

    class _GenerateOnly:  # the old warm-up: no after-warm-up step
        def generate(self, request: Any, progress: Any = None) -> Any:
            return engine.generate(request, progress)

    warm = run_warmup(engine if args.plan == "new" else _GenerateOnly(), profile,
                      plan if args.plan == "new" else plan[:2])
    result: dict[str, Any] = {"plan": args.plan, "profile": args.profile, "sets": args.set, "model": model,
                              "device": device, "date": time.strftime("%Y-%m-%d"),
                              "card": torch.cuda.get_device_name(0) if device != "cpu" else "cpu",
                              "pgo": not args.no_pgo, "imports_s": round(imports_s, 2), "setup_s": round(setup_s, 2),
                              "warmup": warm, "cudnn_benchmark_after_warmup": torch.backends.cudnn.benchmark,
                              "requests": []}
    if args.trace_first:
        result["trace_first"] = trace_first(engine, profile, device, args.trace_dir)
        Path(args.out).write_text(json.dumps(result, indent=1), "utf-8")
        return
    clock = PhaseClock(engine)
    seen: set[str] = set()

    def one(size: str, prompt: str = "a red fox in fresh snow", label: str = "") -> dict[str, Any]:
        w, h = (int(x) for x in size.split("x"))
        request = request_from_profile(profile, prompt, seed=7, batch=1, width=w, height=h)
        clock.marks.clear()
        before = _counters()
        started = time.perf_counter()
        res = engine.generate(request, clock.step)
        row = {"size": size, "first_at_size": size not in seen, "label": label,
               "cudnn_benchmark": torch.backends.cudnn.benchmark, "engine_s": round(res.seconds, 4),
               **clock.phases(started), "counters": _delta(before, _counters())}
        seen.add(size)
        result["requests"].append(row)
        print(json.dumps(row), flush=True)
        return row

    for size in [s for s in args.sizes.split(",") if s]:
        one(size)
        one(size)
    one(args.sizes.split(",")[0], LONG_PROMPT, "long prompt (128-token bucket)")
    # The other cuDNN setting, for new sizes and for the profile's (warm-up tuned) size.
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    for size in [s for s in args.flip_sizes.split(",") if s]:
        one(size, label="cudnn flipped")
        one(size, label="cudnn flipped")
    own = f"{profile.generation.width}x{profile.generation.height}"
    one(own, label="cudnn flipped")
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    if args.profile_size:
        result["profiler"] = _profiled(one, args.profile_size, device)
    Path(args.out).write_text(json.dumps(result, indent=1), "utf-8")


class _JobHook:
    """The worker's step hook, less its pipe: asked for previews and stops each step, as a job's is."""

    def __call__(self, step: int, total: int) -> None:
        """A job's Progress would be sent here."""

    def wants_preview(self, step: int) -> bool:
        """No preview was asked for."""
        return False

    def preview(self, step: int, image: Any) -> None:
        """Never called without a wish for one."""

    def stop(self) -> str | None:
        """No Steer came."""
        return None


def trace_first(engine: Any, profile: Any, device: str, trace_dir: str, top: int = 25) -> dict[str, Any]:
    """Profile the 1st and 2nd request at the profile's size after the warm-up; the ops that differ most."""
    import gzip
    import shutil

    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from zitops.engine.request import request_from_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    g = profile.generation
    runs: dict[str, Any] = {}
    ops: dict[str, dict[str, dict[str, float]]] = {}
    for nth, seed in (("first", 11), ("second", 12)):
        request = request_from_profile(profile, "a red fox in fresh snow", seed=seed, batch=g.batch,
                                       width=g.width, height=g.height)
        before = _counters()
        with torch_profile(activities=activities) as prof:
            t0 = time.perf_counter()
            res = engine.generate(request, _JobHook())
            res.images[0].tobytes()  # the worker hands raw pixels to the agent
            if device != "cpu":
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        runs[nth] = {"wall_s": round(wall, 4), "engine_s": round(res.seconds, 4),
                     "counters": _delta(before, _counters())}
        ops[nth] = {e.key[:100]: {"calls": e.count, "cpu_ms": e.self_cpu_time_total / 1000,
                                  "cuda_ms": getattr(e, "self_device_time_total", 0.0) / 1000}
                    for e in prof.key_averages()}
        if trace_dir:
            Path(trace_dir).mkdir(parents=True, exist_ok=True)
            raw = Path(trace_dir) / f"first-trace-{nth}.json"
            prof.export_chrome_trace(str(raw))
            with raw.open("rb") as src, gzip.open(f"{raw}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            raw.unlink()
        print(json.dumps({nth: runs[nth]}), flush=True)
    diff: list[dict[str, Any]] = []
    for key in set(ops["first"]) | set(ops["second"]):
        a, b = ops["first"].get(key, {}), ops["second"].get(key, {})
        row: dict[str, Any] = {"op": key, "calls": [a.get("calls", 0), b.get("calls", 0)],
               "cpu_ms": [round(a.get("cpu_ms", 0.0), 2), round(b.get("cpu_ms", 0.0), 2)],
               "cuda_ms": [round(a.get("cuda_ms", 0.0), 2), round(b.get("cuda_ms", 0.0), 2)]}
        row["extra_ms"] = round(max(row["cpu_ms"][0] - row["cpu_ms"][1], row["cuda_ms"][0] - row["cuda_ms"][1]), 2)
        diff.append(row)
    diff.sort(key=lambda r: r["extra_ms"], reverse=True)
    runs["first_over_second"] = round(runs["first"]["wall_s"] / runs["second"]["wall_s"], 3)
    runs["top_differing_ops"] = diff[:top]
    for row in diff[:top]:
        print(f"{row['extra_ms']:>9.2f} ms  calls {row['calls']}  cpu {row['cpu_ms']}  cuda {row['cuda_ms']}  "
              f"{row['op']}", flush=True)
    return runs


def _profiled(one: Any, size: str, device: str) -> dict[str, Any]:
    """The ops that took longest (self CPU time) in the first and second request at ``size``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    out: dict[str, Any] = {}
    for nth in ("first", "second"):
        with profile(activities=activities) as prof:
            one(size, label=f"profiled ({nth})")
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:20]
        out[nth] = [{"op": e.key[:80], "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2),
                     "cpu_ms": round(e.cpu_time_total / 1000, 2)} for e in rows]
    return out


if __name__ == "__main__":
    main()
