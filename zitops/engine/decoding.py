"""The real engine's decode path: latents to PIL images through the VAE (or the tiny TAEF1 decoder),
and a step's preview; a part of :class:`~zitops.engine.diffusers_engine.DiffusersEngine`.

torch is imported inside the functions only (the worker's path). The engine inherits :class:`Decoding`;
the attributes below are the engine's own, declared here for the type checker only.
"""

from __future__ import annotations

from typing import Any

from zitops.engine.stepping import latent_rgb, small_latents
from zitops.profile import EngineSettings


def _to_pil(image: Any) -> list[Any]:
    """VAE output in [-1, 1] to PIL images: diffusers' postprocess arithmetic, done on the device.

    Only uint8 pixels cross to the host (3 MB per 1024x1024 image instead of
    12 MB of float32), and the rounding matches ``VaeImageProcessor.postprocess``.
    They cross already in row order (height, width, channel), made contiguous
    on the device: ``.cpu()`` keeps a permuted tensor's strides, and Pillow
    gathers a strided array on the CPU first (1024x1024 on the dev box: 4.2 ms
    against 0.4 ms, benchmarks/results/cpu-2026-12-08-to-pil.json).
    """
    import torch
    from PIL import Image

    pixels = ((image.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return [Image.fromarray(p) for p in pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()]


class Decoding:
    """The engine's decode and preview methods."""

    settings: EngineSettings
    pipe: Any
    tiny_vae: Any

    def _preview(self, latents: Any) -> list[Any]:
        """A step's preview: the linear latent map, or the VAE decode (engine.preview_decode)."""
        if self.settings.preview_decode == "vae":
            return self._decode(small_latents(latents), False)
        return latent_rgb(latents)

    def _decode(self, latents: Any, free_hooks: bool = True) -> list[Any]:
        """Latents to PIL images through the configured decode path."""
        import torch

        pipe = self.pipe
        cfg = pipe.vae.config
        with torch.no_grad():
            # The pipeline's latent space is the FLUX VAE's, scaled and shifted;
            # a TAEF1 decoder takes the same unscaled latents as the full VAE.
            if self.tiny_vae is not None:
                raw = latents.to(self.tiny_vae.device, self.tiny_vae.dtype)
                raw = raw / cfg.scaling_factor + cfg.shift_factor
                image = self.tiny_vae.decode(raw, return_dict=False)[0]
            else:
                raw = latents.to(pipe.vae.dtype) / cfg.scaling_factor + cfg.shift_factor
                image = pipe.vae.decode(raw, return_dict=False)[0]
            images = _to_pil(image)
        if free_hooks:
            pipe.maybe_free_model_hooks()
        return images
