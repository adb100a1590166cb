"""One-GPU lever study at real size (random weights): what each speed lever is worth.

Run on a CUDA machine from the repository root:

    python3 benchmarks/levers.py --out results.json [--size 1024] [--steps 8] [--fp8]

Measures, in one process and on the same card: the plain ZImagePipeline
(baseline), the text encoder at 512-token vs longest padding, one transformer
forward per attention backend, the VAE decode (eager and compiled), the zitops
engine (regional compile + levers) with its compile time, output deviation
from the baseline for the same seed, and PNG encode time. Prints one JSON
line per stage and writes them all to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "a red fox sitting in fresh snow at sunrise, detailed fur, soft light, photograph"
RESULTS: list[dict[str, Any]] = []
OUT: Path | None = None


def emit(stage: str, **data: Any) -> None:
    """Record and print one stage's numbers (and rewrite the output file, in case of a timeout)."""
    row = {"stage": stage, **data}
    RESULTS.append(row)
    print(json.dumps(row), flush=True)
    if OUT is not None:
        OUT.write_text(json.dumps({"results": RESULTS}, indent=1))


def gpu_time(fn: Any, n: int = 3, warm: int = 1) -> tuple[float, list[float]]:
    """Median milliseconds of ``fn()`` over ``n`` runs after ``warm`` runs, by CUDA events."""
    import torch

    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), [round(t, 2) for t in times]


def wall(fn: Any, n: int = 3, warm: int = 1) -> tuple[float, list[float], float]:
    """Median seconds over ``n`` calls after ``warm`` calls; also the first call's seconds."""
    import torch

    first = 0.0
    for i in range(warm):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if i == 0:
            first = time.perf_counter() - t0
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), [round(t, 4) for t in times], first


def peak_gib() -> float:
    """Peak allocated GiB since the last reset."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def reset() -> None:
    """Free cached blocks and start a new peak window."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def main() -> None:
    """Run every stage; see the module docstring."""
    global OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="levers.json")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache-dir", default="/tmp/zitops-bench-cache")
    ap.add_argument("--fp8", action="store_true", help="also measure the fp8 engine")
    ap.add_argument("--skip-backends", action="store_true")
    ap.add_argument("--no-engine", action="store_true", help="skip the engine stage (zitops bench covers it)")
    args = ap.parse_args()
    OUT = Path(args.out)

    import numpy as np
    import torch

    from zitops.engine.full import build_full_pipeline
    from zitops.engine.offline import force_offline

    force_offline()
    import diffusers

    props = torch.cuda.get_device_properties(0)
    emit("env", card=props.name, total_gib=round(props.total_memory / 2**30, 1), torch=torch.__version__,
         diffusers=diffusers.__version__, date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
         size=args.size, steps=args.steps)
    dev = "cuda:0"
    size, steps = args.size, args.steps

    # -- baseline: plain ZImagePipeline -------------------------------------------
    reset()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    pipe = build_full_pipeline(dev, torch.bfloat16, torch.bfloat16)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0

    def plain() -> Any:
        g = torch.Generator("cpu").manual_seed(7)
        return pipe(prompt=PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=0.0,
                    generator=g, output_type="np").images

    med, times, first = wall(plain, n=args.runs)
    ref = plain()
    emit("baseline_plain", s_per_image=round(med, 4), times=times, first_s=round(first, 2),
         build_s=round(build_s, 2), peak_gib=peak_gib())

    # -- text encoder: 512 padding vs longest -------------------------------------------
    from zitops.engine.precision.accel import _encode_prompt_longest

    with torch.no_grad():
        ms512, _ = gpu_time(lambda: pipe._encode_prompt(PROMPT, dev))
        e512 = pipe._encode_prompt(PROMPT, dev)[0]
        msl, _ = gpu_time(lambda: _encode_prompt_longest(pipe, PROMPT, dev))
        el = _encode_prompt_longest(pipe, PROMPT, dev)[0]
    emit("text_encoder", ms_pad512=round(ms512, 2), ms_longest=round(msl, 2), tokens=int(el.shape[0]),
         max_abs_diff=float((e512.float() - el.float()).abs().max()))

    # -- one transformer forward per attention backend ------------------------------------
    lat = size // 8
    x = [torch.randn(16, 1, lat, lat, device=dev, dtype=torch.bfloat16)]
    t = torch.full((1,), 0.5, device=dev, dtype=torch.float32)
    cap = [el]
    tr = pipe.transformer

    def fwd() -> Any:
        with torch.no_grad():
            return tr(x, t, cap, return_dict=False)[0]

    backends: dict[str, Any] = {}
    names = ["native"] if args.skip_backends else ["native", "_native_cudnn", "_native_flash",
                                                    "_native_efficient", "_flash_3", "flash", "sage"]
    for name in names:
        try:
            tr.set_attention_backend(name)
            ms, _ = gpu_time(fwd, n=3)
            backends[name] = round(ms, 2)
        except Exception as exc:  # noqa: BLE001 - an unusable backend is a result too
            backends[name] = f"unusable: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    tr.set_attention_backend("native")
    emit("transformer_forward_eager_ms", **backends)

    # -- VAE decode -------------------------------------------------------------------------
    z = torch.randn(1, 16, lat, lat, device=dev, dtype=torch.bfloat16)

    def dec() -> Any:
        with torch.no_grad():
            return pipe.vae.decode(z, return_dict=False)[0]

    vae_eager, _ = gpu_time(dec)
    torch.backends.cudnn.benchmark = True
    vae_bench, _ = gpu_time(dec)
    t0 = time.perf_counter()
    pipe.vae.decoder.compile(dynamic=False)
    dec()
    torch.cuda.synchronize()
    vae_compile_s = time.perf_counter() - t0
    vae_comp, _ = gpu_time(dec)
    emit("vae_decode_ms", eager=round(vae_eager, 2), cudnn_benchmark=round(vae_bench, 2),
         compiled=round(vae_comp, 2), compile_s=round(vae_compile_s, 1))
    torch.backends.cudnn.benchmark = False

    # -- PNG encode (the worker's CPU work per image) ----------------------------------------
    from PIL import Image

    from zitops.engine.output import encode_image

    img = Image.fromarray((ref[0] * 255).round().astype("uint8"))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))
    t0 = time.perf_counter()
    for _ in range(3):
        blob = encode_image(img, "png", {"prompt": PROMPT, "seed": 7})
    png_ms = (time.perf_counter() - t0) / 3 * 1000
    t0 = time.perf_counter()
    blob2 = encode_image(noise, "png", {"prompt": PROMPT})
    png_noise_ms = (time.perf_counter() - t0) * 1000
    emit("png_encode_ms", image=round(png_ms, 1), bytes=len(blob), random_noise=round(png_noise_ms, 1),
         noise_bytes=len(blob2))
    # Free the baseline's weights before the engine loads (the closures above hold these names).
    pipe = tr = x = cap = e512 = el = z = None  # type: ignore[assignment]
    reset()

    # -- the zitops engine: designer profile, regional compile + levers ----------------------
    def engine_stage(label: str, env: str) -> None:
        from zitops.engine.diffusers_engine import DiffusersEngine
        from zitops.engine.request import request_from_profile
        from zitops.profile import load_profile

        os.environ["ZITOPS_ACCEL"] = env
        prof = load_profile("designer", [f"generation.width={size}", f"generation.height={size}",
                                         f"generation.steps={steps}"])
        reset()
        torch.manual_seed(0)
        eng = DiffusersEngine(prof.engine, "full-random", cache_dir=args.cache_dir)
        t0 = time.perf_counter()
        eng.setup(dev)
        torch.cuda.synchronize()
        setup_s = time.perf_counter() - t0
        req = request_from_profile(prof, PROMPT, seed=7)
        t0 = time.perf_counter()
        res = eng.generate(req)
        first_s = time.perf_counter() - t0
        med, times, _ = wall(lambda: eng.generate(req), n=args.runs, warm=1)
        out = np.asarray(eng.generate(req).images[0]).astype(np.float64) / 255.0
        diff = np.abs(out - ref[0])
        mse = float((diff ** 2).mean())
        psnr = 10 * np.log10(1.0 / mse) if mse > 0 else float("inf")
        # Per-forward time of the compiled transformer, on the engine's own pipeline.
        tr2 = eng.pipe.transformer
        cap2 = eng.pipe._encode_prompt(PROMPT, dev)
        x2 = [torch.randn(16, 1, lat, lat, device=dev, dtype=torch.bfloat16)]
        t2 = torch.full((1,), 0.5, device=dev, dtype=torch.float32)

        def fwd2() -> Any:
            with torch.no_grad():
                return tr2(x2, t2, cap2, return_dict=False)[0]

        fms, _ = gpu_time(fwd2, n=5)
        emit(label, s_per_image=round(med, 4), times=times, setup_s=round(setup_s, 2),
             first_call_s=round(first_s, 2), forward_ms=round(fms, 2), peak_gib=peak_gib(),
             vs_baseline_max_abs=round(float(diff.max()), 4), vs_baseline_psnr_db=round(float(psnr), 2),
             effective=eng.effective, accel_env=env, seconds_in_engine=round(res.seconds, 3))
        eng = tr2 = res = None  # type: ignore[assignment]  # free the weights
        reset()

    if not args.no_engine:
        engine_stage("engine_designer", "")
    if args.fp8:
        engine_stage("engine_designer_fp8", "+fp8")


if __name__ == "__main__":
    main()
