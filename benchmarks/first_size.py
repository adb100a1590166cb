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
        def generate(self, request: Any) -> Any:
            return engine.generate(request)

    warm = run_warmup(engine if args.plan == "new" else _GenerateOnly(), profile,
                      plan if args.plan == "new" else plan[:2])
    result: dict[str, Any] = {"plan": args.plan, "profile": args.profile, "sets": args.set, "model": model,
                              "device": device, "date": time.strftime("%Y-%m-%d"),
                              "card": torch.cuda.get_device_name(0) if device != "cpu" else "cpu",
                              "pgo": not args.no_pgo, "imports_s": round(imports_s, 2), "setup_s": round(setup_s, 2),
                              "warmup": warm, "cudnn_benchmark_after_warmup": torch.backends.cudnn.benchmark,
                              "requests": []}
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
