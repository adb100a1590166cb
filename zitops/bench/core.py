"""``zitops bench``'s one entry point: :func:`run` turns :class:`BenchOptions` into a report.

Per profile, in this order (each path frees its GPU memory before the next
loads, so peak VRAM is per path): plain diffusers, the zitops engine (plus
optional sampler and batch sweeps on the same engine), then the agent over
HTTP. The engine compiles into ``cache_dir`` first, so the agent's worker
starts with a warm compile cache: its ready time plus first request is the
restart cost of a recycled worker.
"""

from __future__ import annotations

import datetime as dt
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from zitops.bench.report import PATHS, BenchReport, PathResult, ProfileRun
from zitops.engine.request import GenerationRequest, request_from_profile, validate_request
from zitops.errors import InvalidRequest, ZitopsError
from zitops.profile import SAMPLERS, Profile, load_profile
from zitops.progress import Progress

DEFAULT_PROMPT = "a red fox sitting in fresh snow at sunrise, detailed fur, soft light, photograph"
Echo = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    """Everything ``zitops bench`` was asked to do."""

    profiles: tuple[str, ...] = ("designer",)
    overrides: tuple[str, ...] = ()
    model: str = "tiny"
    device: str = "auto"
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    batch: int | None = None
    sampler: str | None = None
    seed: int = 7
    prompt: str = DEFAULT_PROMPT
    runs: int = 3
    warmup: int = 1
    paths: tuple[str, ...] = PATHS
    sampler_sweep: tuple[str, ...] = ()
    batch_sweep: tuple[int, ...] = ()
    state_dir: Path | None = None
    cache_dir: Path | None = None
    workdir: Path | None = None
    agent_ready_timeout_s: float = 900.0
    agent_format: str = "png"
    compare: str | None = None
    """"bf16": also run the engine's request with fp8 off and report the deviation (checks.fp8_vs_bf16)."""
    # Simulate a smaller card: the in-process paths' allocator is capped at this
    # many GiB once the weights are on the host (zitops.engine.precision.offload.cap_memory).
    memory_cap_gib: float | None = None
    extra_meta: dict[str, Any] = field(default_factory=dict)


def parse_paths(text: str) -> tuple[str, ...]:
    """``baseline,engine,agent`` (any subset, in any order) into a tuple in canonical order."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [n for n in names if n not in PATHS]
    if bad or not names:
        raise InvalidRequest(f"--paths {text!r}: use a comma list of {', '.join(PATHS)}")
    return tuple(p for p in PATHS if p in names)


def parse_samplers(text: str) -> tuple[str, ...]:
    """``all`` or a comma list of sampler names."""
    if text.strip() == "all":
        return SAMPLERS
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in SAMPLERS]
    if bad or not names:
        raise InvalidRequest(f"--sampler-sweep {text!r}: use 'all' or a comma list of {', '.join(SAMPLERS)}")
    return names


def parse_batches(text: str) -> tuple[int, ...]:
    """A comma list of batch sizes, each 1..16."""
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise InvalidRequest(f"--batch-sweep {text!r}: use a comma list of integers, e.g. 1,2,4") from None
    if not sizes or any(not 1 <= s <= 16 for s in sizes):
        raise InvalidRequest(f"--batch-sweep {text!r}: each batch size must be 1..16")
    return sizes


def check_memory_cap(opts: BenchOptions, device: str) -> None:
    """A cap needs a CUDA device and only the in-process paths (the agent's worker is another process)."""
    if not device.startswith("cuda"):
        raise InvalidRequest(f"--memory-cap-gib caps a CUDA device's memory; the device here is {device}")
    if "agent" in opts.paths:
        raise InvalidRequest("--memory-cap-gib caps this process's allocator, and the agent path's worker "
                             "is another process: use --paths engine (or baseline,engine)")


def resolve_device(requested: str) -> str:
    """``auto`` becomes cuda:0 when torch sees a GPU, else cpu."""
    if requested != "auto":
        return requested
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def build_request(profile: Profile, opts: BenchOptions) -> GenerationRequest:
    """The profile's request with the bench's size/steps/batch/sampler overrides, validated."""
    req = request_from_profile(profile, opts.prompt, width=opts.width, height=opts.height, steps=opts.steps,
                               batch=opts.batch, sampler=opts.sampler, seed=opts.seed)
    return validate_request(req)


def bench_profile(profile: Profile, opts: BenchOptions) -> Profile:
    """The profile as benchmarked: ``max_batch`` raised to cover the batch and sweep sizes."""
    need = max([opts.batch or 0, *opts.batch_sweep, profile.generation.batch])
    if need <= profile.engine.max_batch:
        return profile
    engine = profile.engine.model_copy(update={"max_batch": max(need, profile.engine.max_batch)})
    return profile.model_copy(update={"engine": engine})


def collect_meta(device: str, model: str) -> dict[str, Any]:
    """Where and with what the run happened: date, card, library versions."""
    import diffusers
    import torch

    card = "cpu"
    total = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        card, total = props.name, round(props.total_memory / 2**30, 1)
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "card": card,
        "device_total_gib": total, "device": device, "model": model, "torch": torch.__version__,
        "diffusers": diffusers.__version__, "python": platform.python_version(), "host_cpu": platform.machine(),
    }
    if model in ("tiny", "full-random"):
        meta["notice"] = f"model {model} has random weights: images are noise; timings only"
    return meta


def _error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, ZitopsError) else f"{type(exc).__name__}: {text}"


def _compare_bf16(plan: Any, fp8_image: Any) -> dict[str, Any]:
    """The engine's first image against the same request with fp8 off; the reason when it cannot be compared."""
    if not plan.profile.engine.fp8:
        return {"skipped": "engine.fp8 is off in this profile: nothing to compare"}
    if fp8_image is None:
        return {"skipped": "no fp8 image: --compare bf16 needs the engine path"}
    from zitops.bench.measure import compare_images, reference_image

    try:
        reference = reference_image(plan)
    except Exception as exc:  # noqa: BLE001 - a failed reference is a result, not the end of the run
        return {"error": _error(exc)}
    return {**compare_images(reference, fp8_image),
            "reference": "the same profile, seed and request with engine.fp8=false and compile off"}


def run_profile(name: str, opts: BenchOptions, device: str, state_dir: Path, cache_dir: Path, workdir: Path,
                echo: Echo, progress: Progress | None = None) -> ProfileRun:
    """Measure every requested path for one profile; ``progress`` gets a phase per path, a step per call."""
    from zitops.bench.measure import (
        Plan,
        build_engine,
        compare_images,
        measure_baseline,
        measure_engine,
        sweep_batches,
        sweep_samplers,
    )
    from zitops.engine import phases as setup_phases
    from zitops.engine.precision.offload import uncap_memory

    profile = bench_profile(load_profile(name, opts.overrides), opts)
    req = build_request(profile, opts)
    calls = max(0, opts.warmup) + opts.runs

    def phase(text: str, total: int | None) -> None:
        if progress is None:
            echo(f"{text} ...")
        else:
            progress.phase(text, total=total, unit="call")

    tick: Callable[[], None] = progress.advance if progress is not None else (lambda: None)
    plan = Plan(profile, req, opts.model, device, opts.runs, opts.warmup, state_dir, cache_dir, tick,
                opts.memory_cap_gib)
    params = {"width": req.width, "height": req.height, "steps": req.steps, "batch": req.batch,
              "sampler": req.sampler, "schedule": req.schedule, "seed": req.seeds[0],
              "engine": profile.engine.model_dump(), "runs": opts.runs, "warmup": opts.warmup,
              "memory_cap_gib": opts.memory_cap_gib}
    run = ProfileRun(profile.name, params)
    images: dict[str, Any] = {}
    if "baseline" in opts.paths:
        phase(f"[{name}] baseline: plain diffusers ZImagePipeline", calls)
        try:
            run.results["baseline"], images["baseline"] = measure_baseline(plan)
        except Exception as exc:  # noqa: BLE001 - report a failed path and carry on
            run.results["baseline"] = PathResult("baseline", req.batch, error=_error(exc))
        finally:
            uncap_memory(device)  # the next path builds its weights on the whole card, then caps again
    if "engine" in opts.paths or opts.sampler_sweep or opts.batch_sweep:
        phase(f"[{name}] zitops engine", calls if "engine" in opts.paths else None)
        engine = None
        try:
            setup_phases.take()  # forget the baseline's marks
            engine, setup_s = build_engine(plan)
            marks = {k: round(v, 2) for k, v in setup_phases.take().items()}
            # Said before the first call, so a run cut short still shows where set-up went.
            echo(f"[{name}] engine set up in {setup_s:.1f} s ("
                 + ", ".join(f"{k} {v:.1f} s" for k, v in marks.items()) + ")")
            if "engine" in opts.paths:
                run.results["engine"], images["engine"] = measure_engine(plan, engine, setup_s)
                run.results["engine"].extra["setup_phases"] = marks
            if opts.sampler_sweep:
                phase(f"[{name}] sampler sweep: {', '.join(opts.sampler_sweep)}",
                      len(opts.sampler_sweep) * (max(1, opts.warmup) + opts.runs))
                run.sampler_sweep = sweep_samplers(plan, engine, opts.sampler_sweep)
            if opts.batch_sweep:
                phase(f"[{name}] batch sweep: {', '.join(str(b) for b in opts.batch_sweep)}",
                      len(opts.batch_sweep) * (max(1, opts.warmup) + opts.runs))
                run.batch_sweep = sweep_batches(plan, engine, opts.batch_sweep)
        except Exception as exc:  # noqa: BLE001
            run.results["engine"] = PathResult("engine", req.batch, error=_error(exc))
        finally:
            del engine
            from zitops.bench.measure import reset_memory

            reset_memory(device)
            uncap_memory(device)
    if opts.compare == "bf16":
        phase(f"[{name}] the same request with fp8 off (--compare bf16)", 1)
        run.checks["fp8_vs_bf16"] = _compare_bf16(plan, images.get("engine"))
    if "agent" in opts.paths:
        phase(f"[{name}] agent over HTTP on 127.0.0.1", calls)
        from zitops.bench.agent_http import measure_agent

        # The agent serves the request as its profile's defaults, and templates the raw prompt itself.
        served = profile.model_copy(update={"generation": profile.generation.model_copy(update={
            "width": req.width, "height": req.height, "steps": req.steps, "sampler": req.sampler,
            "schedule": req.schedule, "batch": req.batch})})
        try:
            result, png = measure_agent(served, opts.model, replace(req, prompt=opts.prompt), runs=opts.runs,
                                        warmup=opts.warmup, fmt=opts.agent_format,
                                        workdir=workdir / profile.name, cache_dir=cache_dir, state_dir=state_dir,
                                        ready_timeout_s=opts.agent_ready_timeout_s, tick=tick)
            run.results["agent"] = result
            if png is not None:
                import io

                from PIL import Image

                images["agent"] = Image.open(io.BytesIO(png))
                images["agent"].load()
        except Exception as exc:  # noqa: BLE001
            run.results["agent"] = PathResult("agent", req.batch, error=_error(exc))
    # Same seed, same weights: the engine (and the agent) must stay within bf16
    # tolerance of plain diffusers. The sampler matters, so only compare like with like.
    if "baseline" in images and images["baseline"] is not None and req.sampler == "euler":
        for other in ("engine", "agent"):
            if images.get(other) is not None:
                run.checks[f"{other}_vs_baseline"] = compare_images(images["baseline"], images[other])
    if images.get("engine") is not None and images.get("agent") is not None:
        run.checks["agent_vs_engine"] = compare_images(images["engine"], images["agent"])
    if progress is not None:
        progress.close()
    return run


def run(opts: BenchOptions, echo: Echo = print, progress: Progress | None = None) -> BenchReport:
    """Run the benchmark described by ``opts``; never leaves an agent running."""
    from zitops.engine.loader import FULL_RANDOM, default_state_dir
    from zitops.engine.offline import force_offline

    force_offline()
    device = resolve_device(opts.device)
    if opts.model == FULL_RANDOM and not device.startswith("cuda"):
        raise InvalidRequest("--arch full builds the real-size model (about 20 GB of weights) on a GPU; "
                             "no CUDA device is available here (use --model tiny on a CPU)")
    if opts.memory_cap_gib is not None:
        check_memory_cap(opts, device)
    state_dir = opts.state_dir or default_state_dir()
    with tempfile.TemporaryDirectory(prefix="zitops-bench-") as tmp:
        workdir = opts.workdir or Path(tmp)
        cache_dir = opts.cache_dir or (workdir / "cache")
        report = BenchReport(meta={**collect_meta(device, opts.model), **opts.extra_meta})
        for name in opts.profiles:
            report.runs.append(run_profile(name, opts, device, Path(state_dir), Path(cache_dir), Path(workdir),
                                           echo, progress))
    return report
