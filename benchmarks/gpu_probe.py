"""Where a real-size designer image spends its time on a GPU, and what the kernels can do.

Not run by CI (needs a CUDA GPU). Prints one JSON object per section and
writes them all to --out:

- ``kernels``: attention at the designer's shape (1 x 4128 tokens x 30 heads x
  128) through each SDPA backend and FlashAttention-3 (bf16, and fp8 when the
  build has it), and the block's GEMMs in bf16 and fp8 (row-wise and
  tensor-wise scales), as ms and TFLOP/s;
- ``engine``: the zitops engine (designer profile, full-size random weights,
  compiled), seconds per image and the split into text encoding, one
  transformer forward, VAE decode + pixels to host;
- ``profile``: one image under torch.profiler: GPU busy time versus wall time
  and the top kernels.

Usage: python benchmarks/gpu_probe.py --out probe.json [--skip-engine]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
TOKENS, HEADS, HEAD_DIM, DIM, HIDDEN = 4128, 30, 128, 3840, 10240


def _bench(fn: Any, reps: int = 20) -> float:
    """Median milliseconds of ``fn`` over ``reps`` CUDA-event-timed calls after 3 warm-ups."""
    from levers import gpu_time  # benchmarks/levers.py, beside this script

    return gpu_time(fn, n=reps, warm=3)[0]


def kernels() -> dict[str, Any]:
    """Attention and GEMM throughput at the designer's shapes."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out: dict[str, Any] = {}
    q, k, v = (torch.randn(1, TOKENS, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    attn_flop = 4 * TOKENS * TOKENS * HEAD_DIM * HEADS
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    ref = F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2).float()
    for name, backend in (("sdpa_default", None), ("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                          ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            if backend is None:
                ms = _bench(lambda: F.scaled_dot_product_attention(qt, kt, vt))
            else:
                with sdpa_kernel(backend):
                    ms = _bench(lambda: F.scaled_dot_product_attention(qt, kt, vt))
            out[name] = {"ms": round(ms, 3), "tflops": round(attn_flop / ms / 1e9, 1)}
        except RuntimeError as exc:
            out[name] = f"unusable: {str(exc).splitlines()[0][:120]}"
    from zitops.engine.precision.attention import load_flash3

    fn, source = load_flash3("cuda")
    out["flash3_source"] = source
    if fn is not None:
        def fa3() -> Any:
            r = fn(q, k, v)
            return r[0] if isinstance(r, tuple) else r

        ms = _bench(fa3)
        err = (fa3().float() - ref).abs().max().item()
        out["flash3_bf16"] = {"ms": round(ms, 3), "tflops": round(attn_flop / ms / 1e9, 1), "max_abs_vs_sdpa": err}
        try:
            q8, k8, v8 = (x.to(torch.float8_e4m3fn) for x in (q, k, v))
            one = torch.ones(1, HEADS, device="cuda", dtype=torch.float32)

            def fa3_fp8() -> Any:
                r = fn(q8, k8, v8, q_descale=one, k_descale=one, v_descale=one)
                return r[0] if isinstance(r, tuple) else r

            ms = _bench(fa3_fp8)
            err = (fa3_fp8().float() - ref).abs().max().item()
            out["flash3_fp8"] = {"ms": round(ms, 3), "tflops": round(attn_flop / ms / 1e9, 1),
                                 "max_abs_vs_sdpa_bf16": err}
        except (RuntimeError, TypeError) as exc:
            out["flash3_fp8"] = f"unusable: {str(exc).splitlines()[0][:160]}"
    gemms = {"qkv": (DIM, 3 * DIM), "q_only": (DIM, DIM), "w13": (DIM, 2 * HIDDEN), "w1_only": (DIM, HIDDEN),
             "w2": (HIDDEN, DIM)}
    for name, (kk, n) in gemms.items():
        a = torch.randn(TOKENS, kk, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, kk, device="cuda", dtype=torch.bfloat16)
        flop = 2 * TOKENS * kk * n
        ms = _bench(lambda a=a, w=w: a @ w.t())
        row: dict[str, Any] = {"bf16_ms": round(ms, 3), "bf16_tflops": round(flop / ms / 1e9, 1)}
        a8, w8 = a.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
        sa, sw = torch.ones(TOKENS, 1, device="cuda"), torch.ones(1, n, device="cuda")
        one = torch.ones((), device="cuda")
        for tag, (s_a, s_w) in (("fp8_rowwise", (sa, sw)), ("fp8_tensorwise", (one, one))):
            try:
                ms = _bench(lambda s_a=s_a, s_w=s_w, a8=a8, w8=w8: torch._scaled_mm(a8, w8.t(), scale_a=s_a, scale_b=s_w,
                                                                      out_dtype=torch.bfloat16))
                row[f"{tag}_ms"] = round(ms, 3)
                row[f"{tag}_tflops"] = round(flop / ms / 1e9, 1)
            except RuntimeError as exc:
                row[tag] = f"unusable: {str(exc).splitlines()[0][:120]}"
        out[f"gemm_{name}"] = row
    return out


def engine_breakdown(runs: int) -> tuple[dict[str, Any], Any]:
    """The engine's seconds per image and its parts; returns (results, engine)."""
    import torch

    from zitops.engine.diffusers_engine import DiffusersEngine
    from zitops.engine.loader import FULL_RANDOM
    from zitops.engine.request import request_from_profile
    from zitops.profile import load_profile

    profile = load_profile("designer")
    engine = DiffusersEngine(profile.engine, FULL_RANDOM, cache_dir="/tmp/zprobe-cache")
    t0 = time.perf_counter()
    engine.setup("cuda:0")
    setup_s = time.perf_counter() - t0
    req = request_from_profile(profile, "a red fox in fresh snow at sunrise, soft light, 35mm photo", seeds=(7,))
    t0 = time.perf_counter()
    engine.generate(req)
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.generate(req)
        times.append(time.perf_counter() - t0)
    pipe = engine.pipe
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(req.prompt, device="cuda:0", do_classifier_free_guidance=False)
        text_ms = _bench(lambda: pipe.encode_prompt(req.prompt, device="cuda:0", do_classifier_free_guidance=False),
                         reps=10)
        lat = torch.randn(1, 16, 1, req.height // 8, req.width // 8, device="cuda", dtype=torch.bfloat16)
        t = torch.full((1,), 0.5, device="cuda")
        fwd_ms = _bench(lambda: pipe.transformer(list(lat.unbind(0)), t, embeds, return_dict=False), reps=10)
        lat4 = torch.randn(1, 16, req.height // 8, req.width // 8, device="cuda", dtype=torch.float32)
        decode_ms = _bench(lambda: engine._decode(lat4), reps=10)
    res = {"setup_s": round(setup_s, 2), "first_image_s": round(first_s, 2),
           "s_per_image": round(statistics.median(times), 4), "times_s": [round(x, 4) for x in times],
           "text_encode_ms": round(text_ms, 2), "transformer_forward_ms": round(fwd_ms, 2),
           "decode_to_host_ms": round(decode_ms, 2), "prompt_tokens": int(embeds[0].shape[0]),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "effective": engine.effective}
    return res, (engine, req)


def profile_one(engine: Any, req: Any) -> dict[str, Any]:
    """GPU busy time versus wall time for one image, and the top kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        engine.generate(req)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    spans = sorted((e.time_range.start, e.time_range.end) for e in events)
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += cur_e - cur_s
    gaps = []
    ordered = sorted(events, key=lambda e: e.time_range.start)
    for before, after in zip(ordered, ordered[1:], strict=False):
        gap = after.time_range.start - before.time_range.end
        if gap > 300:  # us
            gaps.append((round(gap / 1000, 2), before.name[:60], after.name[:60]))
    gaps.sort(reverse=True)
    per: dict[str, float] = {}
    for e in events:
        per[e.name] = per.get(e.name, 0.0) + (e.time_range.end - e.time_range.start)
    top = sorted(per.items(), key=lambda kv: -kv[1])[:15]
    syncs = sum(1 for e in prof.events() if e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                       "cudaMemcpyAsync", "cudaEventSynchronize"))
    return {"wall_ms": round(wall * 1000, 1), "gpu_busy_ms": round(busy / 1000, 1),
            "sync_or_copy_calls": syncs, "gaps_over_0.3ms_total_ms": round(sum(g[0] for g in gaps), 1),
            "largest_gaps_ms": gaps[:12],
            "top_kernels_ms": [(name[:90], round(us / 1000, 2)) for name, us in top]}


def main() -> None:
    """Run the sections and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--skip-kernels", action="store_true")
    args = ap.parse_args()
    import torch

    result: dict[str, Any] = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__}
    if not args.skip_kernels:
        result["kernels"] = kernels()
        print(json.dumps({"kernels": result["kernels"]}, indent=1), flush=True)
    if not args.skip_engine:
        res, (engine, req) = engine_breakdown(args.runs)
        result["engine"] = res
        print(json.dumps({"engine": res}, indent=1), flush=True)
        result["profile"] = profile_one(engine, req)
        print(json.dumps({"profile": result["profile"]}, indent=1), flush=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
