"""fp8 linears for the transformer and the text encoder, with a bf16 keep-list (``engine.fp8``).

Two ways to run a float8 e4m3 weight (per-row scales):

- **gemm**: activations scaled per token to e4m3 too, one ``torch._scaled_mm``
  (compute capability 8.9+: Ada, Hopper, Blackwell). Faster and half the memory.
- **weight_only**: the e4m3 weight is dequantized to the activation dtype right
  before an ordinary matmul. Half the memory, no fp8 arithmetic, so it runs on
  any GPU and on the CPU (slower than bf16 there: a dequantize per call).

``engine.fp8: true`` picks gemm where the device has fp8 GEMMs and weight_only
elsewhere; ``"weight_only"`` forces it; ``"auto"`` (a speed profile's choice)
takes gemm where it exists and leaves the layers alone elsewhere. The keep-list (``engine.fp8_keep_bf16``)
names layers that stay in the profile's precision: fp8 on every layer of the
trained model turned its images into noise (vLLM-Omni, PR 2795), fixed by
keeping the sensitive ones. Weights are quantized one layer at a time straight
onto the execution device, so a 16 GB card never holds the bf16 pipeline whole.
Imports torch only inside functions (the worker's).
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from zitops.engine.precision.transfer import Stager, stager_for, to_device
from zitops.errors import ProfileError

if TYPE_CHECKING:
    from zitops.profile import EngineSettings

log = logging.getLogger("zitops.engine")

FP8_MAX = 448.0
"""Largest finite float8 e4m3fn value."""

COMPONENTS = ("transformer", "text_encoder")
"""The pipeline parts whose linear layers fp8 replaces (the VAE is convolutions)."""

_classes: dict[str, Any] = {}


FP8_GEMM_CAPABILITY = (8, 9)
"""The CUDA compute capability from which a GPU has fp8 GEMMs (Ada, Hopper, Blackwell)."""


def fp8_supported(device: str) -> bool:
    """True on CUDA devices with fp8 GEMMs: compute capability 8.9 or newer (Ada, Hopper, Blackwell)."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    return tuple(torch.cuda.get_device_capability(torch.device(device))) >= FP8_GEMM_CAPABILITY


def mode_for(setting: bool | str, gemm: bool) -> str | None:
    """``engine.fp8`` on a device with (``gemm``) or without fp8 GEMMs: "gemm", "weight_only" or None (off)."""
    if setting is False:
        return None
    if setting == "weight_only":
        return "weight_only"
    if gemm:
        return "gemm"
    return None if setting == "auto" else "weight_only"


def resolve_mode(setting: bool | str, device: str) -> str | None:
    """``engine.fp8`` on ``device``: "gemm", "weight_only" or None (off; "auto" without fp8 GEMMs)."""
    return mode_for(setting, setting is not False and fp8_supported(device))


def settle_auto(setting: bool | str, capabilities: list[tuple[int, int] | None]) -> bool | str:
    """``engine.fp8`` for an agent whose workers run on devices of ``capabilities`` (None: the CPU).

    "auto" becomes true when every worker's GPU has fp8 GEMMs (each then runs
    them) and false otherwise, so the agent's edge and its workers agree on
    whether the layers are fp8 (a LoRA request is refused at the edge exactly
    then); any other setting is returned as it is.
    """
    if setting != "auto":
        return setting
    return bool(capabilities) and all(c is not None and c >= FP8_GEMM_CAPABILITY for c in capabilities)


def _quantized(weight: Any, device: Any, stager: Stager | None) -> tuple[Any, Any]:
    """(e4m3 weight, per-row float32 scale of shape [out, 1]) on ``device``."""
    import torch

    w = to_device(weight.detach(), device, stager).float()
    scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    return (w / scale).to(torch.float8_e4m3fn), scale


def fast_accum() -> bool:
    """fp8 GEMMs with the fast accumulation of Hopper's fp8 tensor cores (``ZITOPS_ACCEL=-fp8fastacc`` turns it off).

    H200, ecommerce (896x896, batch 8): 0.441 -> 0.421 s/image, the deviation from bf16 unchanged
    (35.47 dB, max abs 0.1176 both; random weights).
    """
    from zitops.engine.precision.accel import disabled_levers

    return "fp8fastacc" not in disabled_levers()


def _linear_classes() -> dict[str, Any]:
    # One class per mode for every layer: dynamo guards on module types, so a
    # class per layer made every one of the 34 regionally compiled blocks a new
    # graph (fp8 compiled 52 s cold, 32 s from a warm cache, on an H200).
    if _classes:
        return _classes
    import torch

    class Fp8Linear(torch.nn.Module):
        """A frozen linear layer: e4m3 weights with per-row scales, activations scaled per token."""

        def __init__(self, lin: Any, device: Any, stager: Stager | None = None) -> None:
            super().__init__()
            w8, scale = _quantized(lin.weight, device, stager)
            self.register_buffer("weight_fp8", w8)
            self.register_buffer("weight_scale", scale.t().contiguous())
            self.bias = None if lin.bias is None else torch.nn.Parameter(
                to_device(lin.bias.detach(), device, stager), requires_grad=False)
            self.in_features, self.out_features = lin.in_features, lin.out_features
            self.fast_accum = fast_accum()

        def forward(self, x: Any) -> Any:
            shape = x.shape
            flat = x.reshape(-1, shape[-1])
            xs = (flat.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
            xq = (flat.float() / xs).to(torch.float8_e4m3fn)
            w8: Any = self.weight_fp8
            ws: Any = self.weight_scale
            out = torch._scaled_mm(xq, w8.t(), scale_a=xs, scale_b=ws, bias=self.bias, out_dtype=x.dtype,
                                   use_fast_accum=self.fast_accum)
            return out.reshape(*shape[:-1], out.shape[-1])

    class Fp8WeightOnlyLinear(torch.nn.Module):
        """A frozen linear layer stored as e4m3 with per-row scales, computed in the activation dtype."""

        def __init__(self, lin: Any, device: Any, stager: Stager | None = None) -> None:
            super().__init__()
            w8, scale = _quantized(lin.weight, device, stager)
            self.register_buffer("weight_fp8", w8)
            # Kept in the layer's own dtype: the dequantize is then one multiply, no float32 copy.
            self.register_buffer("weight_scale", scale.to(lin.weight.dtype))
            self.bias = None if lin.bias is None else torch.nn.Parameter(
                to_device(lin.bias.detach(), device, stager), requires_grad=False)
            self.in_features, self.out_features = lin.in_features, lin.out_features

        def forward(self, x: Any) -> Any:
            w8: Any = self.weight_fp8
            ws: Any = self.weight_scale
            weight = w8.to(x.dtype) * ws.to(x.dtype)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return torch.nn.functional.linear(x, weight, bias)

    _classes.update(gemm=Fp8Linear, weight_only=Fp8WeightOnlyLinear)
    return _classes


def linear_class(mode: str) -> Any:
    """The module class fp8 ``mode`` ("gemm" or "weight_only") swaps a linear for."""
    return _linear_classes()[mode]


# -- the keep-list -------------------------------------------------------------------
def _aliases(name: str, lengths: dict[str, int]) -> list[str]:
    """``name`` plus every spelling with a list index counted from the end (``layers.29`` = ``layers.-1``)."""
    parts = name.split(".")
    options: list[list[str]] = []
    for i, part in enumerate(parts):
        size = lengths.get(".".join(parts[:i]))
        options.append([part, str(int(part) - size)] if size is not None and part.isdigit() else [part])
    return [".".join(combo) for combo in itertools.product(*options)]


def _matches(pattern: str, aliases: list[str]) -> bool:
    """A pattern names a module and everything under it; globs (``*``, ``?``) allowed."""
    return any(fnmatch.fnmatchcase(a, pattern) or fnmatch.fnmatchcase(a, pattern + ".*") for a in aliases)


def plan_swaps(pipe: Any, keep: tuple[str, ...]) -> tuple[dict[str, list[tuple[str, Any]]], list[str]]:
    """The linears to swap per component (qualified names), and those kept; refuses a pattern matching none.

    Names are ``<component>.<module path>``, e.g. ``transformer.layers.0`` or
    ``text_encoder.layers.35.mlp``; a negative index counts from the end of its list.
    """
    import torch

    swaps: dict[str, list[tuple[str, Any]]] = {}
    kept: list[str] = []
    used: set[str] = set()
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        lengths = {f"{component}.{n}" if n else component: len(m) for n, m in module.named_modules()
                   if isinstance(m, torch.nn.ModuleList)}
        swaps[component] = []
        for name, child in module.named_modules():
            if not isinstance(child, torch.nn.Linear):
                continue
            qualified = f"{component}.{name}"
            aliases = _aliases(qualified, lengths)
            hits = [p for p in keep if _matches(p, aliases)]
            used.update(hits)
            if hits:
                kept.append(qualified)
            else:
                swaps[component].append((name, child))
    unused = [p for p in keep if p not in used]
    if unused:
        raise ProfileError(f"engine.fp8_keep_bf16: {unused[0]!r} matches no linear layer of this model "
                           "(names are transformer.<path> or text_encoder.<path>, e.g. transformer.layers.0, "
                           "transformer.layers.-1, text_encoder.layers.35.mlp; globs allowed)")
    return swaps, kept


def _aligned(lin: Any) -> bool:
    # torch._scaled_mm wants both matrix sides in multiples of 16.
    return bool(lin.in_features % 16 == 0 and lin.out_features % 16 == 0)


def quantize_pipeline(pipe: Any, mode: str, keep: tuple[str, ...], device: str, *,
                      park: Collection[str] = ()) -> dict[str, Any]:
    """Swap the transformer's and text encoder's linears (all but the kept) for ``mode``'s fp8 class.

    Each new layer's weights are built on ``device`` and the old layer dropped
    at once, so the bf16 weights never sit on ``device`` all together. The
    layers of the components in ``park`` (those an offloading profile keeps in
    host memory) move to the host once built: quantized by the GPU, stored on
    the host. Returns what ``/status`` shows as ``effective.fp8``.
    """
    swaps, kept = plan_swaps(pipe, keep)
    cls = linear_class(mode)
    stager = stager_for(device)
    counts: dict[str, int] = {}
    unaligned = 0
    for component, layers in swaps.items():
        root = getattr(pipe, component)
        done = 0
        while layers:
            # Popped, so the old layer's weights are freed as soon as its fp8 one exists.
            name, lin = layers.pop(0)
            if mode == "gemm" and not _aligned(lin):
                unaligned += 1
                continue
            owner_name, _, attr = name.rpartition(".")
            owner = root.get_submodule(owner_name) if owner_name else root
            layer = cls(lin, device, stager)
            setattr(owner, attr, layer.to("cpu") if component in park else layer)
            del lin
            done += 1
        counts[component] = done
    info: dict[str, Any] = {"mode": mode, "linears": counts, "kept_bf16": len(kept)}
    if mode == "gemm":
        info["fast_accum"] = fast_accum()
    if unaligned:
        info["unaligned_kept"] = unaligned  # sides not multiples of 16: no fp8 GEMM for them
    log.info("fp8 %s: %s linears swapped, %d kept in their precision", mode, counts, len(kept))
    return info


def quantize_for_engine(pipe: Any, settings: EngineSettings, device: str, *, park: Collection[str],
                        note: Callable[[str], None]) -> dict[str, Any]:
    """``engine.fp8``: linears to fp8, computed on ``device``; the effective keys.

    The components in ``park`` (kept in host memory by the profile's offload)
    get each fp8 layer moved to the host as soon as it exists, so a small card
    never holds more than one bf16 layer of them during set-up.
    """
    from zitops.engine.phases import phase
    from zitops.engine.precision.accel import disabled_levers, enabled_levers
    from zitops.engine.precision.attention import fuse_projections

    setting = settings.fp8 or ("fp8" in enabled_levers())
    mode = resolve_mode(setting, device)
    if mode is None:
        return {}
    if setting is True and mode == "weight_only":
        note(f"fp8 GEMMs need a CUDA GPU of compute capability 8.9+; {device} stores fp8 "
             "weights and computes in bf16 (weight-only)")
    with phase("fp8"):
        if "fuse" not in disabled_levers():
            fuse_projections(pipe.transformer)  # fused first, so the fused q/k/v and w1/w3 are what is quantized
        info = quantize_pipeline(pipe, mode, settings.fp8_keep_bf16, device, park=park)
    return {"fp8": info, "fp8_linears": sum(info["linears"].values())}
