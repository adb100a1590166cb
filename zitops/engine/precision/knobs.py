"""The profile's engine knobs applied to a loaded pipeline: dtypes, VAE decode, attention, compile.

Each function takes the pipeline and the settings and returns what it
made effective; :class:`zitops.engine.diffusers_engine.DiffusersEngine`
calls them from ``setup``. Imports torch and diffusers, so only the worker
(and benchmarks) call it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from zitops.engine.precision.offload import HOST_COMPONENTS
from zitops.errors import EngineError, ModelError, ProfileError
from zitops.profile import EngineSettings

VAE_TILE_PX = 512
"""Tiles well under the 1024 px the FLUX VAE config names, so "tiled" saves memory at the sizes people ask for."""

Note = Callable[[str], None]
"""Records a knob that was ignored or changed, and why (the engine's notes)."""


def torch_dtype(name: str) -> Any:
    """The torch dtype of a profile precision: bf16, fp16 or fp32."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def attention_backends() -> list[str]:
    """The attention backend names this diffusers knows."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [b.value for b in AttentionBackendName]


def setup_vae(pipe: Any, s: EngineSettings, device: str, vae_dtype: Any, note: Note) -> tuple[str, Any]:
    """Apply ``engine.vae_decode``: (the effective mode, the tiny autoencoder for "fast" or None)."""
    vae = pipe.vae
    mode = s.vae_decode
    if mode == "fast":
        if s.tiny_vae_path:
            from diffusers import AutoencoderTiny

            path = Path(s.tiny_vae_path).expanduser()
            try:
                tiny = AutoencoderTiny.from_pretrained(str(path), torch_dtype=vae_dtype, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ModelError(f"engine.tiny_vae_path {path}: cannot load an AutoencoderTiny: "
                                 f"{str(exc).splitlines()[0]}") from None
            if tiny.config.latent_channels != vae.config.latent_channels:
                raise ModelError(f"engine.tiny_vae_path {path}: {tiny.config.latent_channels} latent "
                                 f"channels, the model needs {vae.config.latent_channels} (a TAEF1-style "
                                 "autoencoder)")
            return "fast", tiny.to(device).eval()
        note("vae_decode=fast needs engine.tiny_vae_path (a TAEF1-style AutoencoderTiny); "
             "falling back to tiled decode")
        mode = "tiled"
    if mode == "tiled":
        vae.enable_tiling()
        vae.enable_slicing()
        tile = min(int(vae.config.sample_size), VAE_TILE_PX)
        vae.tile_sample_min_size = tile
        vae.tile_latent_min_size = tile // (2 ** (len(vae.config.block_out_channels) - 1))
    return mode, None


def setup_attention(pipe: Any, name: str | None) -> str:
    """Apply ``engine.attention_backend`` (empty: diffusers' default); the effective backend."""
    if not name:
        return "default"
    valid = attention_backends()
    if name not in valid:
        raise ProfileError(f"engine.attention_backend: unknown {name!r}; valid: {', '.join(valid)}")
    try:
        pipe.transformer.set_attention_backend(name)
    except (RuntimeError, ValueError, ImportError, OSError) as exc:
        raise EngineError(f"engine.attention_backend {name!r} is not usable here: "
                          f"{str(exc).splitlines()[0]}") from None
    return name


def setup_compile(pipe: Any, s: EngineSettings, *, on_cuda: bool, compile_on_cpu: bool, cache_dir: Path,
                  note: Note) -> bool:
    """Apply ``engine.compile`` (regional compilation, persistent caches); True when compiled."""
    if not s.compile:
        return False
    if not on_cuda and not compile_on_cpu:
        note("compile=true is skipped on the CPU (no benefit for a demo)")
        return False
    if "transformer" in HOST_COMPONENTS[s.offload] and on_cuda:
        note("compile with offload: offload hooks move weights each call, expect recompiles")
    from zitops.engine.precision.accel import compile_pipeline
    from zitops.engine.precision.compile_cache import configure_compile_cache

    configure_compile_cache(cache_dir)
    # Regional compilation: one compiled block reused by all 30 layers keeps
    # compile time to seconds instead of minutes.
    compile_pipeline(pipe, fullgraph=s.parallel.degree <= 1)  # context-parallel hooks break the graph
    return True
