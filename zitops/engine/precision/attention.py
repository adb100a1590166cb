"""Z-Image attention and feed-forward, rewired for speed: fused projections and FlashAttention-3.

diffusers' ``ZSingleStreamAttnProcessor`` runs three projection matmuls (q,
k, v) and hands attention to a dispatcher whose best Hopper choice in torch
is FlashAttention-2-class SDPA. This module swaps in:

- **one QKV matmul** (3840 -> 11520) and **one gate/up matmul** in the
  feed-forward (3840 -> 2 x 10240): bigger GEMMs keep the tensor cores
  fuller and halve the launches, with the same arithmetic per output;
- **FlashAttention-3** for the unmasked case (every batch zitops sends: one
  prompt per request, so every sequence has the same length), when a
  FlashAttention-3 package is installed: the official ``flash_attn_interface``
  (flash-attention's hopper build) or the forward-only ``fa3_fwd`` wheel.
  Masked batches fall back to the diffusers dispatcher.

Fusion changes only how the matmuls are grouped, so outputs match the unfused
model to float rounding (a unit test checks it on the tiny model). Imports
torch only inside functions (the worker calls this).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("zitops.engine")

FLASH3_MODULES = ("flash_attn_interface", "fa3_fwd_interface")
"""Python modules that provide FlashAttention-3's ``flash_attn_func``, tried in this order."""


def load_flash3(device: str) -> tuple[Callable[..., Any] | None, str]:
    """FlashAttention-3's ``flash_attn_func`` if installed and usable on ``device``; else (None, reason)."""
    import importlib

    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None, "needs a CUDA device"
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if (major, minor) != (9, 0):
        return None, f"needs a Hopper GPU (compute capability 9.0), this is {major}.{minor}"
    for name in FLASH3_MODULES:
        try:
            module = importlib.import_module(name)
        except (ImportError, OSError) as exc:  # OSError: a wheel built for another torch/CUDA
            log.debug("FlashAttention-3 from %s not usable: %s", name, exc)
            continue
        if name == "fa3_fwd_interface":
            _alias_fa3_fwd_config()
        fn = getattr(module, "flash_attn_func", None)
        if fn is not None:
            return fn, name
    return None, f"not installed (none of {', '.join(FLASH3_MODULES)})"


def _alias_fa3_fwd_config() -> None:
    """fa3-fwd 0.0.3's fake (meta) kernel imports ``flash_attn_config``, a module it ships as
    ``fa3_fwd_config``: without the alias, torch.compile's tracing of the op fails."""
    import importlib
    import sys

    if "flash_attn_config" not in sys.modules:
        with contextlib.suppress(ImportError):
            sys.modules["flash_attn_config"] = importlib.import_module("fa3_fwd_config")


def _flash3_single(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Adapt a flash_attn_func to return the output alone (some versions also return the LSE)."""

    def attend(q: Any, k: Any, v: Any) -> Any:
        out = fn(q, k, v)
        return out[0] if isinstance(out, tuple) else out

    return attend


class FastAttnProcessor:
    """``ZSingleStreamAttnProcessor`` with a fused QKV projection and FlashAttention-3 when given.

    The arithmetic follows diffusers' processor line by line (q/k RMS norms,
    complex RoPE in float32, cast back) so that only the kernels change.
    """

    _attention_backend: Any = None
    _parallel_config: Any = None

    def __init__(self, flash: Callable[..., Any] | None = None, backend: Any = None) -> None:
        """``flash(q, k, v) -> out`` in FlashAttention's (batch, seq, heads, dim) layout, or None."""
        self.flash = flash
        self._attention_backend = backend

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, freqs_cis: Any = None) -> Any:
        """One attention layer: (batch, seq, dim) in, (batch, seq, dim) out."""
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        qkv = getattr(attn, "to_qkv", None)
        if qkv is not None:
            query, key, value = qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = query.unflatten(-1, (attn.heads, -1))
        key = key.unflatten(-1, (attn.heads, -1))
        value = value.unflatten(-1, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if freqs_cis is not None:
            query, key = _rope(query, freqs_cis), _rope(key, freqs_cis)
        dtype = query.dtype
        if attention_mask is None and self.flash is not None:
            out = self.flash(query, key, value.contiguous())
        else:
            if attention_mask is not None and attention_mask.ndim == 2:
                attention_mask = attention_mask[:, None, None, :]
            out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                        is_causal=False, backend=self._attention_backend,
                                        parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(dtype)
        output = attn.to_out[0](out)
        if len(attn.to_out) > 1:
            output = attn.to_out[1](output)
        return output


def _rope(x_in: Any, freqs_cis: Any) -> Any:
    """diffusers' Z-Image rotary embedding (complex multiply in float32)."""
    import torch

    with torch.autocast("cuda", enabled=False):
        x = torch.view_as_complex(x_in.float().reshape(*x_in.shape[:-1], -1, 2))
        return torch.view_as_real(x * freqs_cis.unsqueeze(2)).flatten(3).type_as(x_in)


def _linear_of(weight: Any, bias: Any) -> Any:
    """A frozen Linear holding ``weight`` and ``bias`` (tensors it takes as they are).

    Built on the meta device, so no random init runs: on the host (the fp8 and
    group-offload set-ups fuse there) initializing the fused layers took about
    30 s at full size (the H200 host, 2026-11-29).
    """
    import torch

    out_features, in_features = weight.shape
    lin = torch.nn.Linear(in_features, out_features, bias=bias is not None, device="meta", dtype=weight.dtype)
    lin.weight = torch.nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        lin.bias = torch.nn.Parameter(bias, requires_grad=False)
    return lin


def _concat_linear(linears: list[Any]) -> Any:
    """One Linear whose output is the given linears' outputs side by side."""
    import torch

    with torch.no_grad():
        weight = torch.cat([lin.weight for lin in linears], dim=0)
        bias = None if linears[0].bias is None else torch.cat([lin.bias for lin in linears], dim=0)
    return _linear_of(weight, bias)


def _fused_feed_forward_class(base: type) -> type:
    class FusedFeedForward(base):  # type: ignore[misc, valid-type]
        """Z-Image's SwiGLU feed-forward with w1 and w3 in one matmul."""

        def forward(self, x: Any) -> Any:
            import torch.nn.functional as F

            gate, up = self.w13(x).chunk(2, dim=-1)
            return self.w2(F.silu(gate) * up)

    return FusedFeedForward


def fuse_projections(transformer: Any) -> dict[str, int]:
    """Fuse q/k/v and w1/w3 in every Z-Image transformer block; returns how many blocks have each fused.

    Blocks fused by an earlier call count too (the fp8 step fuses before it
    quantizes, and the levers call this again).
    """
    counts = {"qkv": 0, "ffn": 0}
    fused_classes: dict[type, type] = {}
    for module in transformer.modules():
        if type(module).__name__ != "ZImageTransformerBlock":
            continue
        attn = module.attention
        if getattr(attn, "to_qkv", None) is None and all(hasattr(attn, n) for n in ("to_q", "to_k", "to_v")):
            attn.to_qkv = _concat_linear([attn.to_q, attn.to_k, attn.to_v])
            # The separate weights go, or the model would hold them twice.
            del attn.to_q, attn.to_k, attn.to_v
        counts["qkv"] += getattr(attn, "to_qkv", None) is not None
        ff = module.feed_forward
        if not hasattr(ff, "w13") and hasattr(ff, "w1") and hasattr(ff, "w3"):
            ff.w13 = _concat_linear([ff.w1, ff.w3])
            del ff.w1, ff.w3
            base = type(ff)
            ff.__class__ = fused_classes.setdefault(base, _fused_feed_forward_class(base))
        counts["ffn"] += hasattr(ff, "w13")
    return counts


def install_processor(transformer: Any, flash: Callable[..., Any] | None) -> int:
    """Put a :class:`FastAttnProcessor` on every Z-Image attention layer; returns how many."""
    installed = 0
    # One wrapper shared by every layer: dynamo guards on the function objects
    # a compiled block calls, so a wrapper per layer could mean a graph per block.
    attend = _flash3_single(flash) if flash is not None else None
    for module in transformer.modules():
        if type(module).__name__ != "ZImageTransformerBlock":
            continue
        old = module.attention.processor
        module.attention.set_processor(FastAttnProcessor(attend, getattr(old, "_attention_backend", None)))
        installed += 1
    return installed


def _split_linear(fused: Any, sizes: list[int]) -> list[Any]:
    """The linears :func:`_concat_linear` joined, back apart (exact copies of their rows)."""
    import torch

    parts = []
    start = 0
    with torch.no_grad():
        for size in sizes:
            bias = None if fused.bias is None else fused.bias[start:start + size].clone()
            parts.append(_linear_of(fused.weight[start:start + size].clone(), bias))
            start += size
    return parts


def unfuse_projections(transformer: Any) -> dict[str, int]:
    """Undo :func:`fuse_projections`: separate q/k/v and w1/w3 again (LoRAs target those layers)."""
    counts = {"qkv": 0, "ffn": 0}
    for module in transformer.modules():
        if type(module).__name__ != "ZImageTransformerBlock":
            continue
        attn = module.attention
        qkv = getattr(attn, "to_qkv", None)
        if qkv is not None:
            third = qkv.out_features // 3
            attn.to_q, attn.to_k, attn.to_v = _split_linear(qkv, [third, third, third])
            del attn.to_qkv
            counts["qkv"] += 1
        ff = module.feed_forward
        if hasattr(ff, "w13"):
            half = ff.w13.out_features // 2
            ff.w1, ff.w3 = _split_linear(ff.w13, [half, half])
            del ff.w13
            ff.__class__ = type(ff).__mro__[1]  # the FusedFeedForward's base: diffusers' own class
            counts["ffn"] += 1
    return counts
