"""The real engine: Z-Image-Turbo through diffusers' ``ZImagePipeline``.

The only module (with its helpers knobs/schedulers/full/tiny/decoding/device_memory) that imports
torch, and only inside the worker process. Every profile knob is applied in
``setup``; the sampler, schedule and seeds per request in ``run_batch``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from zitops.engine.base import GenerationResult, ProgressFn
from zitops.engine.decoding import Decoding
from zitops.engine.device_memory import DeviceMemory
from zitops.engine.features import parallel
from zitops.engine.features.controlnet import control_kwargs
from zitops.engine.loader import FULL_RANDOM, Preloaded, default_state_dir
from zitops.engine.offline import force_offline
from zitops.engine.oom import BatchOutOfMemory, generate_split_on_oom
from zitops.engine.phases import phase
from zitops.engine.precision.accel import apply_levers, enabled_levers, settle_after_warmup
from zitops.engine.precision.attention_plans import warm_attention_plans
from zitops.engine.precision.fp8 import quantize_for_engine
from zitops.engine.precision.knobs import setup_attention, setup_compile, setup_vae, torch_dtype
from zitops.engine.precision.offload import (
    HOST_COMPONENTS,
    cap_memory,
    levers_before_placement,
    place,
)
from zitops.engine.request import GenerationRequest
from zitops.engine.stepping import StepLog, step_callback
from zitops.engine.tiny import TINY_NOTICE
from zitops.errors import EngineError, InvalidRequest, ZitopsError
from zitops.profile import SAMPLERS, SCHEDULES, EngineSettings

log = logging.getLogger("zitops.engine")
TEXT_TOKEN_LIMIT = 512
"""ZImagePipeline's ``max_sequence_length`` default: the longest text bucket the warm-up captures."""


class DiffusersEngine(Decoding, DeviceMemory):
    """ZImagePipeline with zitops' knobs, implementing :class:`zitops.engine.base.Engine`."""

    name = "diffusers"

    def __init__(self, settings: EngineSettings | None = None, model: str = "tiny", *,
                 state_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                 compile_on_cpu: bool = False, preloaded: Preloaded | None = None,
                 lora_dir: str | Path | None = None, controlnet_dir: str | Path | None = None,
                 memory_cap_gib: float | None = None) -> None:
        self.settings = settings or EngineSettings.model_validate({})
        # A smaller card simulated on a big one (``zitops bench --memory-cap-gib``): applied in setup.
        self.memory_cap_gib = memory_cap_gib
        self.model = model
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.cache_dir = Path(cache_dir) if cache_dir else self.state_dir / "cache"
        # torch.compile on a CPU demo costs more than it saves; tests opt in.
        self.compile_on_cpu = compile_on_cpu or self.settings.compile_on_cpu
        self.device = "cpu"
        self.pipe: Any = None
        self.tiny_vae: Any = None
        self.model_path: Path | None = None
        self.tiny = False
        self.effective: dict[str, Any] = {}
        self.notes: list[str] = []
        self.last_previews: list[Any] = []
        self.variants: dict[str, Any] = {}  # img2img / inpaint pipelines over the same modules
        from zitops.engine.features.lora import LoraAdapters

        self.loras = LoraAdapters(lora_dir)
        self.loras.hotswap_rank = self.settings.lora_hotswap_rank
        from zitops.engine.features.controlnet import ControlNets

        self.controlnets = ControlNets(controlnet_dir)  # loaded on the first control request
        # A standby spare's host copy of the pipeline (see preload): setup moves it instead of loading.
        self.preloaded = preloaded
        self.decode = True  # False on a context-parallel group's ranks 1..N-1: rank 0 alone returns the images

    @classmethod
    def preload(cls, settings: EngineSettings, model: str,
                state_dir: str | Path | None = None) -> Preloaded | None:
        """Load ``model`` onto the host for a later ``setup`` (a standby spare's head start); never touches CUDA.

        None where setup would not load from disk onto the host first (the
        random full-size model, or offload other than "none").
        """
        if model == FULL_RANDOM or settings.offload != "none":
            return None
        from zitops.engine.loader import load_pipeline, resolve_model

        force_offline()
        path = resolve_model(model, state_dir if state_dir is not None else default_state_dir())
        started = time.perf_counter()
        pipe = load_pipeline(path, torch_dtype(settings.precision), torch_dtype(settings.vae_precision))
        return Preloaded(pipe, path, settings.precision, settings.vae_precision,
                         round(time.perf_counter() - started, 3))

    def _take_preloaded(self, offload: str) -> Any:
        """The preloaded pipeline when it is this model in these dtypes for this placement, else None."""
        handle, self.preloaded = self.preloaded, None
        if handle is None:
            return None
        s = self.settings
        if (handle.model_path, handle.precision, handle.vae_precision, offload) != (
                self.model_path, s.precision, s.vae_precision, "none"):
            handle.drop()  # free the host copy before loading the right one
            self._note(f"the standby spare's preloaded {handle.model_path} ({handle.precision}) does not match "
                       "this setup; loading again")
            return None
        return handle.take()

    # -- setup -------------------------------------------------------------
    def setup(self, device: str) -> None:
        """Load the pipeline onto ``device`` and apply every engine knob."""
        force_offline()
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"device {device!r}: CUDA is not available in this process")
        self.device = device
        s = self.settings
        dtype, vae_dtype = torch_dtype(s.precision), torch_dtype(s.vae_precision)
        on_cuda = device.startswith("cuda")
        offload = s.offload if on_cuda else "none"
        if s.offload != "none" and not on_cuda:
            self._note(f"offload={s.offload} needs a CUDA device; ignored on {device}")
        cap: dict[str, float] = {}
        if self.model == FULL_RANDOM:
            if not on_cuda:
                raise EngineError("the full-size random architecture (--arch full) is for GPU "
                                  "benchmarks; it needs a CUDA device, not " + device)
            from zitops.engine.full import build_full_pipeline

            # Random init is fast on the GPU and very slow on the CPU, so build
            # there even for offload, then park the weights on the CPU.
            pipe = build_full_pipeline(device, dtype, vae_dtype, cache_dir=self.cache_dir)
            if offload != "none" or self.memory_cap_gib:
                # A capped card starts from host memory too: fp8 then quantizes layer
                # by layer onto the device, as it does from weights read off disk.
                with phase("park"):  # the random build's stand-in for weights read into host memory
                    pipe.to("cpu")
                    torch.cuda.empty_cache()
            # The build stands in for reading weights from disk into host memory,
            # which a real small card never holds on the GPU: the cap starts after it.
            cap = cap_memory(device, self.memory_cap_gib) if self.memory_cap_gib else {}
        else:
            cap = cap_memory(device, self.memory_cap_gib) if self.memory_cap_gib else {}
            from zitops.engine.loader import load_pipeline, resolve_model
            from zitops.engine.tiny import is_tiny

            self.model_path = resolve_model(self.model, self.state_dir)
            self.tiny = is_tiny(self.model_path)
            # Opt-in (ZITOPS_ACCEL=+directload): loading straight onto the GPU measured
            # slower than host-first on an H200 (1.6 vs 1.9 GB/s, page cache warm).
            direct = device if on_cuda and offload == "none" and "directload" in enabled_levers() else None
            preloaded = self._take_preloaded(offload)
            if preloaded is not None:
                with phase("load"):  # paid by the standby spare before its assignment (standby.preload_s)
                    pipe = preloaded
            else:
                pipe = load_pipeline(self.model_path, dtype, vae_dtype, device=direct)
        self.pipe = pipe
        fp8 = quantize_for_engine(pipe, s, device, park=HOST_COMPONENTS[offload], note=self._note)
        levers_first = levers_before_placement(offload)
        placed: dict[str, Any] = {}
        if not levers_first:
            with phase("to_device"):
                placed = place(pipe, offload, device, s)
        self._base_scheduler_config = dict(pipe.scheduler.config)
        vae_decode, self.tiny_vae = setup_vae(pipe, s, device, vae_dtype, self._note)
        backend = setup_attention(pipe, s.attention_backend)

        with phase("levers"):
            levers = apply_levers(pipe, device, attention_backend=s.attention_backend, graphs=offload == "none")
        backend = levers.pop("attention_backend", backend)
        if levers_first:
            with phase("to_device"):
                placed = place(pipe, offload, device, s)
        par = parallel.enable(pipe.transformer, s.parallel, device) if s.parallel.degree > 1 else {}
        with phase("compile_setup"):
            compiled = setup_compile(pipe, s, on_cuda=on_cuda, compile_on_cpu=self.compile_on_cpu,
                                     cache_dir=self.cache_dir, note=self._note)
        self.effective = {
            "precision": s.precision, "vae_precision": s.vae_precision, "vae_decode": vae_decode,
            "offload": offload, "compile": compiled, "attention_backend": backend, **levers, **fp8,
        }
        self.effective.update(cap)
        self.effective.update(placed)
        self.effective.update(par)
        if offload == "group" and placed["offload_group"]["blocks"] != s.offload_group_blocks:
            self._note(f"offload_group_blocks={s.offload_group_blocks} applies without offload_stream; "
                       "diffusers streams one block at a time, so 1 is used")
        if self.tiny:
            log.warning("%s (model %s)", TINY_NOTICE, self.model_path)

    def after_warmup(self, shapes: list[tuple[int, int, int]] | None = None) -> dict[str, Any]:
        """After the warm-up generations: attention plans, every text-length bucket in a CUDA graph, cuDNN
        autotuning off.

        Each cost otherwise lands in a request: a caption length the warm-up
        prompt never had built its attention plans (80 ms of a first request
        at 1024² on an H100, :mod:`~zitops.engine.precision.attention_plans`),
        a longer prompt than any seen paid its graph capture, and with
        autotuning on cuDNN benchmarked every VAE convolution at each new image
        size (0.76 s of a 1.55 s first request at 1152x896 on an H200).
        ``shapes``: the (batch, width, height) whose plans to build.
        ``ZITOPS_ACCEL=-cudnnwarm`` keeps autotuning on.
        """
        plans = warm_attention_plans(self.pipe, self.device, list(shapes or []))
        out = {**settle_after_warmup(self.pipe, self.device, TEXT_TOKEN_LIMIT), "attention_plans": plans}
        if "cudnn_benchmark" in self.effective:
            self.effective["cudnn_benchmark"] = out["cudnn_benchmark"]
        return out

    def _note(self, text: str) -> None:
        self.notes.append(text)
        log.warning("%s", text)

    # -- generation -------------------------------------------------------
    def generate(self, request: GenerationRequest, progress: ProgressFn | None = None) -> GenerationResult:
        """Make ``request.batch`` images, at most ``engine.max_batch`` per pipeline call.

        A chunk that runs out of memory is split and retried.
        """
        step = self.settings.max_batch
        if request.batch <= step:
            return generate_split_on_oom(self, request, progress)
        results = []
        rest = request
        while rest.batch:
            chunk, rest = rest.split(min(step, rest.batch))
            results.append(generate_split_on_oom(self, chunk, progress))
        info = dict(results[0].info)
        info["oom_splits"] = sum(int(r.info.get("oom_splits", 0)) for r in results)
        info["chunks"] = len(results)
        return GenerationResult([im for r in results for im in r.images], request.seeds,
                                sum(r.seconds for r in results), info)

    def _check(self, request: GenerationRequest) -> None:
        if self.pipe is None:
            raise EngineError("engine not set up: call setup(device) first")
        for side_name, side in (("width", request.width), ("height", request.height)):
            if side % 16 or side <= 0:
                raise InvalidRequest(f"{side_name}: {side} is not a positive multiple of 16 "
                                     "(Z-Image-Turbo needs sides in steps of 16)")
        if request.sampler not in SAMPLERS:
            raise InvalidRequest(f"sampler: unknown {request.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if request.schedule not in SCHEDULES:
            raise InvalidRequest(f"schedule: unknown {request.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if request.batch < 1 or request.steps < 1:
            raise InvalidRequest("batch and steps must be at least 1")

    def run_batch(self, request: GenerationRequest, progress: ProgressFn | None = None) -> GenerationResult:
        """All images of ``request`` in one pipeline call; raises BatchOutOfMemory if it does not fit."""
        import torch

        from zitops.engine.features import img2img
        from zitops.engine.schedulers import make_scheduler

        self._check(request)
        parallel.check_request(self.settings.parallel, request)
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in request.seeds]
        scheduler = make_scheduler(self._base_scheduler_config, request.sampler, request.schedule)
        scheduler.zitops_generators = generators
        self.pipe.scheduler = scheduler
        lora_info = self.loras.apply(self.pipe, request.loras, fp8=bool(self.effective.get("fp8_linears")),
                                     note=self._note)
        prepared = img2img.prepare(request) if request.init_image is not None else None
        pipe = self.pipe if prepared is None else img2img.variant_pipeline(self.pipe, request.kind, self.variants)
        extra = prepared.kwargs if prepared is not None else {}
        if request.control_image is not None:
            pipe, extra = self._control_pipeline(), control_kwargs(request)
        steps = StepLog()
        start = time.perf_counter()
        try:
            latents = pipe(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt if request.guidance > 0 else None,
                height=request.height, width=request.width, num_inference_steps=request.steps,
                guidance_scale=request.guidance, num_images_per_prompt=request.batch,
                generator=generators, output_type="latent",
                callback_on_step_end=step_callback(request, progress, self._preview, steps),
                **extra,
            ).images
            images = self._decode(latents) if self.decode else []
        except torch.OutOfMemoryError as exc:
            del exc  # the traceback pins the tensors that did not fit
            raise BatchOutOfMemory(f"batch of {request.batch} at {request.width}x{request.height}") from None
        except ZitopsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any library failure is an engine failure
            if "out of memory" in str(exc).lower():
                raise BatchOutOfMemory(str(exc).splitlines()[0]) from None
            raise EngineError(f"generation failed: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        if prepared is not None:
            images = img2img.finish(prepared, images)
        seconds = time.perf_counter() - start
        info = {**self._info(request), **lora_info, "transformer_forwards": steps.forwards, "steps_run": steps.steps}
        if prepared is not None:
            info.update(mode=request.kind, denoising_strength=request.strength)
        if request.control_image is not None:
            info.update(mode="control", control_type=request.control_type,
                        control_strength=request.control_strength, controlnet_load_s=self.controlnets.load_s)
        if steps.interrupted_at is not None:
            info["interrupted_at_step"] = steps.interrupted_at
        if request.preview:
            # PIL images stay on the engine: info travels as JSON to the agent.
            self.last_previews = list(steps.previews)
            info["preview_steps"] = steps.forwards
        return GenerationResult(images=images, seeds=request.seeds, seconds=seconds, info=info)

    def _control_pipeline(self) -> Any:
        """The ControlNet pipeline over the loaded modules (the weights load on first use)."""
        eff = self.effective
        return self.controlnets.pipeline_for(
            self.pipe, dtype=torch_dtype(self.settings.precision), device=self.device,
            compile_blocks=bool(eff.get("compile")), attention_backend=eff.get("attention_backend"),
            note=self._note)

    def _info(self, request: GenerationRequest) -> dict[str, Any]:
        info: dict[str, Any] = {
            "model": self.model_label(), "prompt": request.prompt,
            "negative_prompt": request.negative_prompt, "guidance": request.guidance,
            "sampler": request.sampler, "schedule": request.schedule,
            "steps": request.steps, "size": f"{request.width}x{request.height}",
            "profile": request.profile, "device": self.device, "tiny": self.tiny, **self.effective,
        }
        if self.tiny:
            info["notice"] = TINY_NOTICE
        return info

    def model_label(self) -> str:
        """A short model name for metadata: the directory name, or the special model name."""
        if self.model == FULL_RANDOM:
            return "full-random (random weights)"
        if self.tiny:
            return "tiny (random weights)"
        return self.model_path.name if self.model_path else self.model

    def describe(self) -> dict[str, Any]:
        """Model, precision and effective knobs, for /status and PNG metadata."""
        import diffusers
        import torch

        d: dict[str, Any] = {
            "engine": self.name, "model": self.model_label(),
            "model_path": str(self.model_path) if self.model_path else None,
            "tiny": self.tiny, "device": self.device, "requested": self.settings.model_dump(),
            "effective": dict(self.effective), "notes": list(self.notes),
            "torch": str(torch.__version__), "diffusers": str(diffusers.__version__),
        }
        if self.tiny:
            d["notice"] = TINY_NOTICE
        if self.pipe is not None:
            d["dtypes"] = {"transformer": str(self.pipe.transformer.dtype).replace("torch.", ""),
                           "text_encoder": str(self.pipe.text_encoder.dtype).replace("torch.", ""),
                           "vae": str(self.pipe.vae.dtype).replace("torch.", "")}
        return d
