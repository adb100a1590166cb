"""Context parallel for Z-Image's transformer: diffusers' own hooks, with the plan the model lacks.

diffusers 0.42 ships context parallel (Ulysses and ring attention in
``attention_dispatch``, the split/gather hooks in ``hooks.context_parallel``)
but ``ZImageTransformer2DModel`` declares no ``_cp_plan``. Its attention goes
through ``dispatch_attention_fn``, so a plan is all it needs; this module
holds it and applies it the way ``ModelMixin.enable_parallelism`` does. It
does the applying itself because ``enable_parallelism`` derives the device as
``rank % torch.accelerator.device_count()``, which divides by zero on a CPU
host (the gloo path the tests take).

The split is on the sequence each attention sees, in three stretches: the
image tokens through the noise refiner, the caption tokens through the
context refiner (each padded to a multiple of 32 by the model), and the
unified image+caption sequence through the 30 main layers. Each stretch
splits its input and its rotary frequencies at the first layer (the
frequencies at every layer, as the model hands each layer the whole tensor),
and gathers at the last, so the code between (padding, concatenation,
unpatchify) sees whole sequences. Padding masks exist only when a batch's
captions differ in length; Ulysses gathers them, ring refuses them
(:func:`check_mask`). Imports torch and diffusers: the worker's only.
"""

from __future__ import annotations

from typing import Any

from zitops.engine.request import GenerationRequest
from zitops.errors import EngineError, InvalidRequest
from zitops.parallel_settings import ParallelSettings, parallel_problem

RING_BACKENDS = ("_native_cudnn", "_native_flash", "flash", "flash_hub", "_flash_3_hub", "sage", "sage_hub")
"""Attention backends whose kernels return the log-sum-exp that ring attention merges blocks with."""
RING_DEFAULT = "_native_cudnn"
"""The ring backend when the profile names none: torch's own cuDNN attention, nothing to install."""

STRETCHES = ("noise_refiner", "context_refiner", "layers")
"""The transformer's ModuleLists whose attention runs split across the group."""


def cp_plans(transformer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``_cp_plan`` of a ZImageTransformer2DModel, as (splits, gathers): each stretch split, then gathered.

    Two plans, applied one after the other, because a plan is keyed by module
    and a one-layer stretch (the tiny model's refiners) splits and gathers at
    the same layer.
    """
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    splits: dict[str, Any] = {}
    gathers: dict[str, Any] = {}
    for name in STRETCHES:
        splits[f"{name}.0"] = {"x": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)}
        # Every layer gets the stretch's whole frequencies (and mask) from the model's forward: split at each.
        splits[f"{name}.*"] = {"freqs_cis": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
                               "attn_mask": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False)}
        gathers[f"{name}.{len(getattr(transformer, name)) - 1}"] = ContextParallelOutput(gather_dim=1,
                                                                                        expected_dims=3)
    return splits, gathers


def enable(transformer: Any, settings: ParallelSettings, device: str) -> dict[str, Any]:
    """Split ``transformer``'s attention across the initialised process group; what became effective.

    Call once, after the attention processors are final (the levers) and
    before compiling. The group (torch.distributed, :mod:`zitops.worker.group`)
    must hold ``settings.degree`` ranks; this one computes on ``device``.
    """
    import torch
    import torch.distributed as dist
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig

    if not dist.is_initialized() or dist.get_world_size() != settings.degree:
        raise EngineError(f"engine.parallel.degree {settings.degree}: the worker's process group is not set up "
                          f"with {settings.degree} ranks")
    heads = int(transformer.config.n_heads)
    problem = parallel_problem(settings.kind, settings.degree, heads)
    if problem:
        raise EngineError(f"engine.parallel: {problem}")
    backend = _ring_backend(transformer, device_type=torch.device(device).type) if settings.kind == "ring" else None
    ulysses = settings.degree if settings.kind == "ulysses" else 1
    ring = settings.degree if settings.kind == "ring" else 1
    cp = ContextParallelConfig(ulysses_degree=ulysses, ring_degree=ring)
    where = torch.device(device)
    mesh = dist.device_mesh.init_device_mesh(where.type, cp.mesh_shape, mesh_dim_names=cp.mesh_dim_names)
    config = ParallelConfig(context_parallel_config=cp)
    rank = dist.get_rank()
    config.setup(rank, settings.degree, where, mesh=mesh)
    transformer._parallel_config = config
    fa3_off = 0
    for name in STRETCHES:
        for layer in getattr(transformer, name):
            processor = layer.attention.processor
            processor._parallel_config = config
            if getattr(processor, "flash", None) is not None:
                # zitops' FlashAttention-3 call bypasses diffusers' dispatcher, where the split happens.
                processor.flash = None
                fa3_off += 1
    for plan in cp_plans(transformer):
        apply_context_parallel(transformer, cp, plan)
    return {"parallel": {"kind": settings.kind, "degree": settings.degree, "rank": rank, "heads": heads,
                         "heads_per_rank": heads // ulysses, "backend": dist.get_backend(),
                         "flash3_layers_off": fa3_off,
                         **({"ring_attention_backend": backend} if backend else {})}}


def _ring_backend(transformer: Any, device_type: str) -> str:
    """The attention backend ring attention will use: the profile's when it returns the log-sum-exp, else cuDNN's."""
    if device_type != "cuda":
        raise EngineError("engine.parallel.kind ring needs CUDA devices: diffusers' ring attention needs a "
                          "kernel that returns the log-sum-exp, and no CPU backend does (use kind ulysses)")
    current = transformer.layers[0].attention.processor._attention_backend
    name = str(getattr(current, "value", current or ""))
    if name in RING_BACKENDS:
        return name
    transformer.set_attention_backend(RING_DEFAULT)
    return RING_DEFAULT


def check_request(settings: ParallelSettings, request: GenerationRequest) -> None:
    """Refuse, with a 4xx naming the field, what a group cannot split exactly.

    ControlNet adds its residuals, computed over the whole sequence, to the
    main layers' split one. Ring attention cannot take a padding mask, which
    comes with guidance: the pipeline batches the prompt with the negative
    prompt, whose captions differ in length, and diffusers' ring attention
    would apply one rank's slice of that mask to every rank's keys (wrong,
    not slow). Ulysses gathers the mask and is exact.
    """
    if settings.degree <= 1:
        return
    if request.control_image is not None:
        raise InvalidRequest("control_image: ControlNet is not available with engine.parallel (degree "
                             f"{settings.degree}); use a profile without it")
    if settings.kind == "ring" and request.guidance > 0:
        raise InvalidRequest(f"guidance: {request.guidance} needs engine.parallel.kind ulysses (or guidance 0); "
                             "ring attention cannot mask captions of unequal lengths")
