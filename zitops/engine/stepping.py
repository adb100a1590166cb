"""The pipeline's ``callback_on_step_end`` for the real engine: count, preview, progress, stop.

Previews are made only at the steps the hook (or the request) asks for. By
default (``engine.preview_decode: latent``) a fixed linear map turns the 16
latent channels into RGB at latent resolution (1/8 of the image's side): one
tiny matmul, no VAE. With ``vae`` the latents, scaled down so the preview's
long side is at most :data:`PREVIEW_LATENT_SIDE` latent pixels, go through
the VAE's decoder (sharper, about 17 ms a preview on an H200 at 1024²).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zitops.engine.base import STOP_CANCEL, STOP_INTERRUPT, ProgressFn
from zitops.engine.request import GenerationRequest
from zitops.errors import JobCancelled

PREVIEW_LATENT_SIDE = 32
"""A VAE preview's long side in latent pixels (256 image pixels through the VAE's x8)."""

# The FLUX VAE's latent -> RGB linear preview factors (rows: the 16 channels; columns: R, G, B) and bias,
# as published in ComfyUI's comfy/latent_formats.py (class Flux), for the pipeline's scaled and shifted
# latents. Z-Image-Turbo uses the same 16-channel FLUX autoencoder, so they apply unchanged. Random-weight
# test models make noise either way.
FLUX_LATENT_RGB = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
FLUX_LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)


def latent_rgb(latents: Any) -> list[Any]:
    """The first image's latents as a small PIL preview through the fixed linear map (no VAE)."""
    import torch
    from PIL import Image

    first = latents[:1].float()
    weight = torch.tensor(FLUX_LATENT_RGB, device=first.device)
    bias = torch.tensor(FLUX_LATENT_RGB_BIAS, device=first.device)
    rgb = torch.einsum("bchw,cr->bhwr", first, weight) + bias
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)[0]
    small = Image.fromarray(pixels.cpu().numpy())
    # The image's own size (the VAE's x8), capped like a VAE preview: a few hundred microseconds in PIL.
    scale = min(8.0, PREVIEW_LATENT_SIDE * 8 / max(small.size))
    size = (max(1, round(small.width * scale)), max(1, round(small.height * scale)))
    return [small.resize(size, Image.Resampling.BILINEAR)]


@dataclass
class StepLog:
    """What the callback saw: transformer forwards, previews kept for the engine, an interrupt."""

    forwards: int = 0
    steps: int = 0
    previews: list[Any] = field(default_factory=list)
    interrupted_at: int | None = None


def small_latents(latents: Any) -> Any:
    """The first image's latents, area-scaled so the long side is at most PREVIEW_LATENT_SIDE."""
    import torch.nn.functional as F

    first = latents[:1]
    side = max(int(first.shape[-1]), int(first.shape[-2]))
    if side <= PREVIEW_LATENT_SIDE:
        return first
    scale = PREVIEW_LATENT_SIDE / side
    size = (max(1, round(first.shape[-2] * scale)), max(1, round(first.shape[-1] * scale)))
    return F.interpolate(first.float(), size=size, mode="area").to(first.dtype)


def step_callback(request: GenerationRequest, progress: ProgressFn | None,
                  decode: Callable[[Any], list[Any]], log: StepLog) -> Callable[..., dict[str, Any]]:
    """A ``callback_on_step_end`` that drives ``progress`` (a StepHook when it has its methods)."""
    wants: Callable[[int], bool] | None = getattr(progress, "wants_preview", None)
    hand: Callable[[int, Any], None] | None = getattr(progress, "preview", None)
    stop: Callable[[], str | None] | None = getattr(progress, "stop", None)

    def on_step(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        del t
        log.forwards += 1
        step, total = i + 1, int(p.num_timesteps)
        log.steps = step
        own = request.preview
        hooked = wants is not None and hand is not None and (request.wants_preview(step) or wants(step))
        if own or hooked:
            small = decode(kwargs["latents"])
            if own:
                log.previews[:] = small
            if hooked and hand is not None:
                hand(step, small[0])
        if progress is not None:
            progress(step, total)
        action = stop() if stop is not None else None
        if action == STOP_CANCEL:
            raise JobCancelled(f"cancelled after step {step} of {total}")
        if action == STOP_INTERRUPT and step < total:
            p._interrupt = True  # diffusers skips the remaining steps and returns these latents
            log.interrupted_at = step
        return {}

    return on_step
