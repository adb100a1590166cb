"""Where the pipeline's weights live: ``engine.offload`` applied to a loaded pipeline.

- ``none``: every component on the device.
- ``model``: accelerate's model offload; each component is moved whole, from
  pageable host memory, when the pipeline calls it (the text encoder and the
  transformer resident in turn).
- ``sequential``: accelerate's leaf-level offload (smallest, slowest).
- ``group``: diffusers' group offload for the transformer and the text
  encoder: their ModuleLists are cut into groups of ``engine.offload_group_blocks``
  blocks kept in pinned host memory, and with ``engine.offload_stream`` the
  next group is copied on a side CUDA stream while the current one computes.
  The VAE (160 MB) stays resident.
- ``text_encoder``: the transformer and the VAE stay resident; only the text
  encoder lives in pinned host memory and streams onto the device block by
  block (group offload, one block per group, on a copy stream) while a prompt
  is encoded. The encoder runs once per request and the transformer eight
  times, so this moves ~4 GB (fp8) per image instead of ~10 GB for model
  offload, and never holds the two together: the small-card tiers' mechanism
  (docs/benchmarks.md "Tiers for 12 and 8 GB cards").

Imports torch and diffusers inside functions only (the worker and benchmarks call it).
"""

from __future__ import annotations

from typing import Any

from zitops.errors import EngineError
from zitops.profile import EngineSettings

GROUP_COMPONENTS = ("transformer", "text_encoder")
"""What ``group`` streams; every other component (the VAE) stays on the device."""

HOST_COMPONENTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "model": ("transformer", "text_encoder", "vae"),
    "sequential": ("transformer", "text_encoder", "vae"),
    "group": GROUP_COMPONENTS,
    "text_encoder": ("text_encoder",),
}
"""Per ``engine.offload``, the components whose weights live in host memory between calls
(fp8 parks its layers of these on the host as it builds them)."""


def levers_before_placement(offload: str) -> bool:
    """True when the speed levers must change the modules before the weights are placed.

    Group offload records each parameter's pinned host copy when it is applied;
    a projection fused afterwards would be a parameter it does not know, so the
    engine fuses first, on the host, then applies group offload.
    """
    return offload in ("group", "text_encoder")


def place(pipe: Any, offload: str, device: str, settings: EngineSettings) -> dict[str, Any]:
    """Put the pipeline's weights where ``offload`` says (they start on the host for any offload).

    Returns what group offload made effective (empty for the other modes).
    """
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload in ("group", "text_encoder"):
        return group_offload(pipe, device, settings, HOST_COMPONENTS[offload])
    else:
        resident_to(pipe, device, ())
    return {}


def resident_to(pipe: Any, device: str, host: tuple[str, ...]) -> None:
    """Every module component not in ``host`` onto ``device``, staged through pinned memory on CUDA."""
    import torch

    from zitops.engine.precision.transfer import module_to, stager_for

    stager = stager_for(device)
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and name not in host:
            module_to(component, device, stager)


def group_blocks(settings: EngineSettings) -> int:
    """Blocks per group as diffusers applies them: with a stream it prefetches one block at a time.

    diffusers 0.42 logs "Using streams is only supported for
    num_blocks_per_group=1" and uses 1 (seen on the H200, 2026-11-29), so
    ``offload_group_blocks`` matters only with ``offload_stream: false``.
    """
    return 1 if settings.offload_stream else settings.offload_group_blocks


def group_offload(pipe: Any, device: str, settings: EngineSettings,
                  components: tuple[str, ...]) -> dict[str, Any]:
    """diffusers' block-level group offload on ``components``; the rest on ``device``."""
    import torch

    stream = settings.offload_stream
    if stream and not device.startswith("cuda"):
        raise EngineError(f"engine.offload_stream needs a CUDA device, not {device}; "
                          "set engine.offload_stream=false or run on a GPU")
    blocks = group_blocks(settings)
    pipe.enable_group_offload(
        onload_device=torch.device(device), offload_device=torch.device("cpu"), offload_type="block_level",
        num_blocks_per_group=blocks, use_stream=stream,
        # record_stream lets the side stream's copies be freed without a sync: faster, a little more memory.
        record_stream=stream, non_blocking=stream, low_cpu_mem_usage=settings.offload_low_cpu_mem,
        exclude_modules=[name for name, c in pipe.components.items()
                         if isinstance(c, torch.nn.Module) and name not in components],
    )
    resident_to(pipe, device, components)
    return {"offload_group": {"components": list(components), "blocks": blocks, "stream": stream,
                              "low_cpu_mem": settings.offload_low_cpu_mem}}


def describe(pipe: Any) -> dict[str, str]:
    """Per component: ``group`` where group offload hooks it, else the device of its first weight."""
    import torch
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    out: dict[str, str] = {}
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        if _is_group_offload_enabled(component):
            out[name] = "group"
        else:
            first = next(component.parameters(), None)
            out[name] = first.device.type if first is not None else "none"
    return out


def cap_memory(device: str, cap_gib: float) -> dict[str, float]:
    """Cap this process's CUDA allocator at ``cap_gib`` on ``device``: a smaller card, simulated.

    ``torch.cuda.set_per_process_memory_fraction`` limits the caching
    allocator only; the CUDA context (about 0.5 GiB) is outside it, as it is
    outside the memory a real card leaves to PyTorch. Returns what was applied.
    """
    import torch

    if not device.startswith("cuda"):
        raise EngineError(f"a memory cap is for a CUDA device, not {device}")
    dev = torch.device(device)
    total = torch.cuda.get_device_properties(dev).total_memory
    if cap_gib * 2**30 >= total:
        raise EngineError(f"memory cap {cap_gib:g} GiB: the card has only {total / 2**30:.1f} GiB; "
                          "give a smaller cap")
    fraction = cap_gib * 2**30 / total
    torch.cuda.empty_cache()  # cached blocks from before the cap would count against it
    torch.cuda.set_per_process_memory_fraction(fraction, dev)
    return {"memory_cap_gib": cap_gib, "memory_cap_fraction": round(fraction, 5)}


def uncap_memory(device: str) -> None:
    """Lift :func:`cap_memory`'s cap (the whole card again)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(1.0, torch.device(device))
