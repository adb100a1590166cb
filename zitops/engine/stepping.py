"""The pipeline's ``callback_on_step_end`` for the real engine: count, preview, progress, stop.

Previews are decoded only at the steps the hook (or the request) asks for:
from latents scaled down so the preview's long side is at most
:data:`PREVIEW_LATENT_SIDE` latent pixels, which costs a small fraction of a
full decode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zitops.engine.base import STOP_CANCEL, STOP_INTERRUPT, ProgressFn
from zitops.engine.request import GenerationRequest
from zitops.errors import JobCancelled

PREVIEW_LATENT_SIDE = 32
"""A preview's long side in latent pixels (256 image pixels through the VAE's x8)."""


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
            small = decode(small_latents(kwargs["latents"]))
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
