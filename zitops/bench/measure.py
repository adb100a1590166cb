"""In-process measurements: plain diffusers (the baseline) and the zitops engine.

Both build the same weights (the same local directory, or ``full-random``
seeded identically), run the same request, and report wall seconds per call
after warm-up, the first call's cost (compile + warm-up) and peak VRAM.
torch is imported inside functions only.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zitops.bench.report import PathResult
from zitops.engine.request import GenerationRequest
from zitops.profile import Profile

WEIGHT_SEED = 0
"""torch seed set before building ``full-random`` weights, so baseline and engine share them."""


def _no_tick() -> None:
    pass


@dataclass(frozen=True)
class Plan:
    """What to run for one profile: the request, repetitions, and where."""

    profile: Profile
    request: GenerationRequest
    model: str
    device: str
    runs: int
    warmup: int
    state_dir: Path
    cache_dir: Path
    tick: Callable[[], None] = _no_tick
    """Called after every call, warm-up or timed (the CLI's progress bar)."""
    memory_cap_gib: float | None = None
    """Cap the allocator at this many GiB once the weights are on the host (``--memory-cap-gib``)."""


def sync(device: str) -> None:
    """Wait for queued GPU work so wall times are honest."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def reset_memory(device: str) -> None:
    """Drop cached blocks and start a new peak window."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_mib(device: str) -> float | None:
    """Peak allocated MiB since the last reset; None on the CPU."""
    import torch

    if not device.startswith("cuda"):
        return None
    return float(torch.cuda.max_memory_allocated(torch.device(device))) / 2**20


def peak_reserved_gib(device: str) -> float | None:
    """Peak MiB the allocator held (reserved) since the last reset, in GiB; None on the CPU.

    A memory cap limits what the allocator reserves, so this is the figure to
    hold against the cap; the allocated peak sits below it.
    """
    import torch

    if not device.startswith("cuda"):
        return None
    return round(float(torch.cuda.max_memory_reserved(torch.device(device))) / 2**30, 2)


def image_array(image: Any) -> Any:
    """A PIL image as a float array in [0, 1]."""
    import numpy as np

    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def compare_images(a: Any, b: Any) -> dict[str, float]:
    """Max absolute pixel difference (0..1) and PSNR in dB between two PIL images."""
    import math

    import numpy as np

    x, y = image_array(a), image_array(b)
    mse = float(np.mean((x - y) ** 2))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
    return {"max_abs": round(float(np.max(np.abs(x - y))), 4),
            "psnr_db": round(psnr, 2) if math.isfinite(psnr) else 999.0}


def _timed_calls(fn: Any, plan: Plan, result: PathResult) -> Any:
    """Warm up, then time ``plan.runs`` calls into ``result``; returns the last call's output."""
    out = None
    for i in range(max(0, plan.warmup)):
        t0 = time.perf_counter()
        out = fn()
        sync(plan.device)
        plan.tick()
        if i == 0:
            result.warmup_s = time.perf_counter() - t0
    for _ in range(plan.runs):
        t0 = time.perf_counter()
        out = fn()
        sync(plan.device)
        plan.tick()
        result.times_s.append(time.perf_counter() - t0)
    return out


# -- baseline ---------------------------------------------------------------------
def build_plain_pipeline(plan: Plan) -> Any:
    """ZImagePipeline exactly as diffusers ships it, with the profile's dtype and offload."""
    import torch

    from zitops.engine.loader import FULL_RANDOM
    from zitops.engine.offline import force_offline
    from zitops.engine.precision.knobs import torch_dtype as _dtype

    force_offline()
    s = plan.profile.engine
    dtype, vae_dtype = _dtype(s.precision), _dtype(s.vae_precision)
    offload = s.offload if plan.device.startswith("cuda") else "none"
    if plan.model == FULL_RANDOM:
        from zitops.engine.full import build_full_pipeline

        torch.manual_seed(WEIGHT_SEED)
        # Random init is fast on the GPU and slow on the CPU: build there, then
        # park the weights on the CPU for offload, as the engine does.
        pipe = build_full_pipeline(plan.device, dtype, vae_dtype)
        if offload != "none":
            pipe.to("cpu")
    else:
        from zitops.engine.loader import load_pipeline, resolve_model

        pipe = load_pipeline(resolve_model(plan.model, plan.state_dir), dtype, vae_dtype)
    from zitops.engine.precision.offload import cap_memory, place

    if plan.memory_cap_gib:
        # After the random build, as in the engine: the cap is the serving card's memory.
        torch.cuda.empty_cache()
        cap_memory(plan.device, plan.memory_cap_gib)
    place(pipe, offload, plan.device, s)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure_baseline(plan: Plan) -> tuple[PathResult, Any]:
    """Plain ``pipe(...)`` with the pipeline's own scheduler; returns the result and the first image."""
    import torch

    req = plan.request
    result = PathResult("baseline", batch=req.batch)
    result.notes.append("diffusers' default FlowMatchEuler scheduler, full VAE decode, 512-token text padding")
    reset_memory(plan.device)
    t0 = time.perf_counter()
    pipe = build_plain_pipeline(plan)
    sync(plan.device)
    result.setup_s = time.perf_counter() - t0
    reset_memory(plan.device)  # the peak is what serving needs, not what building needed

    def call() -> Any:
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in req.seeds]
        return pipe(prompt=req.prompt, height=req.height, width=req.width, num_inference_steps=req.steps,
                    guidance_scale=req.guidance, num_images_per_prompt=req.batch, generator=gens,
                    output_type="pil").images

    images = _timed_calls(call, plan, result)
    result.peak_vram_mib = peak_mib(plan.device)
    result.extra["peak_reserved_gib"] = peak_reserved_gib(plan.device)
    first = images[0] if images else None
    pipe = None  # drop the weights before the next path loads its own
    reset_memory(plan.device)
    return result, first


# -- engine -------------------------------------------------------------------------
def build_engine(plan: Plan) -> tuple[Any, float]:
    """The zitops DiffusersEngine for the plan's profile, set up; returns (engine, setup seconds)."""
    import torch

    from zitops.engine.diffusers_engine import DiffusersEngine

    reset_memory(plan.device)
    torch.manual_seed(WEIGHT_SEED)
    engine = DiffusersEngine(plan.profile.engine, plan.model, state_dir=plan.state_dir, cache_dir=plan.cache_dir,
                             memory_cap_gib=plan.memory_cap_gib)
    t0 = time.perf_counter()
    engine.setup(plan.device)
    sync(plan.device)
    return engine, time.perf_counter() - t0


def measure_engine(plan: Plan, engine: Any, setup_s: float) -> tuple[PathResult, Any]:
    """``engine.generate`` on the plan's request; returns the result and the first image."""
    req = plan.request
    result = PathResult("engine", batch=req.batch, setup_s=setup_s)
    result.extra["effective"] = dict(getattr(engine, "effective", {}))
    result.notes.extend(getattr(engine, "notes", []))
    reset_memory(plan.device)  # the peak is what serving needs, not what building needed
    gen = _timed_calls(lambda: engine.generate(req), plan, result)
    result.peak_vram_mib = peak_mib(plan.device)
    result.extra["peak_reserved_gib"] = peak_reserved_gib(plan.device)
    result.extra["engine_seconds_last"] = round(float(gen.seconds), 4)
    return result, gen.images[0] if gen.images else None


def reference_image(plan: Plan) -> Any:
    """The plan's first image from an engine with fp8 off and compile off (eager bf16: the reference)."""
    engine_settings = plan.profile.engine.model_copy(update={"fp8": False, "compile": False})
    profile = plan.profile.model_copy(update={"engine": engine_settings})
    engine, _ = build_engine(Plan(profile, plan.request, plan.model, plan.device, 1, 0, plan.state_dir,
                                  plan.cache_dir, plan.tick))
    try:
        gen = engine.generate(plan.request)
        plan.tick()
        return gen.images[0]
    finally:
        del engine
        reset_memory(plan.device)


def sweep_samplers(plan: Plan, engine: Any, samplers: tuple[str, ...]) -> list[dict[str, Any]]:
    """Seconds per image for each sampler on the same engine (one warm-up call each)."""
    rows: list[dict[str, Any]] = []
    for name in samplers:
        req = _with(plan.request, sampler=name)
        row: dict[str, Any] = {"sampler": name, "batch": req.batch}
        try:
            reset_memory(plan.device)
            probe = PathResult("engine", batch=req.batch)
            sub = _with(plan, request=req, warmup=max(1, plan.warmup))
            gen = _timed_calls(lambda r=req: engine.generate(r), sub, probe)
            row.update(s_per_image=_r(probe.s_per_image), peak_vram_gib=_gib(peak_mib(plan.device)),
                       forwards=gen.info.get("transformer_forwards"), size=f"{req.width}x{req.height}")
        except Exception as exc:  # noqa: BLE001 - one failing sampler is a result, not the end of the sweep
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        rows.append(row)
    return rows


def sweep_batches(plan: Plan, engine: Any, batches: tuple[int, ...]) -> list[dict[str, Any]]:
    """Seconds per image and images per minute for each batch size on the same engine."""
    rows: list[dict[str, Any]] = []
    for b in batches:
        req = _with(plan.request, seeds=tuple(int(plan.request.seeds[0]) + i for i in range(b)))
        row: dict[str, Any] = {"batch": b}
        try:
            reset_memory(plan.device)
            probe = PathResult("engine", batch=b)
            sub = _with(plan, request=req, warmup=max(1, plan.warmup))
            gen = _timed_calls(lambda r=req: engine.generate(r), sub, probe)
            row.update(s_per_image=_r(probe.s_per_image), images_per_min=_r(probe.images_per_min, 2),
                       peak_vram_gib=_gib(peak_mib(plan.device)), oom_splits=gen.info.get("oom_splits", 0))
        except Exception as exc:  # noqa: BLE001 - an OOM at a big batch is a result
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        rows.append(row)
    return rows


def _with(value: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(value, **changes)


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _gib(mib: float | None) -> float | None:
    return None if mib is None else round(mib / 1024, 2)
