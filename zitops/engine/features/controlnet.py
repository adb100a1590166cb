"""ControlNet on the worker's pipeline: the Union ControlNet's weights, loaded once, over the loaded modules.

diffusers' ``ZImageControlNetModel`` holds only the control branch (its
control blocks and patch embedder); ``from_transformer`` points its
timestep/caption embedders, refiners and pad tokens at the worker's own
transformer, and ``ZImageControlNetPipeline`` is built from
``pipe.components`` plus the ControlNet, so the transformer, VAE and text
encoder are never copied. The weights are read from the deployment's
ControlNet directory (a diffusers-format folder: ``config.json`` plus
``diffusion_pytorch_model*.safetensors``) on the first request that asks for
control, not at set-up: a worker that never sees a control request spends
neither the load time nor the VRAM (docs/features.md "ControlNet").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zitops.engine.features.img2img import INSTANCE_LEVERS, decode_png
from zitops.engine.request import GenerationRequest
from zitops.errors import EngineError, InvalidRequest

NO_CONTROLNET = ("control: no ControlNet is deployed; set one with `zitops deploy --controlnet-dir DIR` "
                 "(config key controlnet_dir)")


class ControlNets:
    """The ControlNet of one engine: its directory, the model once loaded, and its pipeline."""

    def __init__(self, controlnet_dir: str | Path | None) -> None:
        self.controlnet_dir = Path(controlnet_dir) if controlnet_dir else None
        self.pipeline: Any = None
        self.load_s: float | None = None

    def pipeline_for(self, pipe: Any, *, dtype: Any, device: str, compile_blocks: bool,
                     attention_backend: str | None, note: Callable[[str], None]) -> Any:
        """The ControlNet pipeline over ``pipe``'s modules, loading the weights on first use."""
        if self.pipeline is None:
            self.pipeline = self._build(pipe, dtype, device, compile_blocks, attention_backend, note)
        self.pipeline.scheduler = pipe.scheduler  # the request's sampler, set on the main pipeline
        return self.pipeline

    def _build(self, pipe: Any, dtype: Any, device: str, compile_blocks: bool,
               attention_backend: str | None, note: Callable[[str], None]) -> Any:
        from diffusers import ZImageControlNetModel, ZImageControlNetPipeline

        if self.controlnet_dir is None:
            raise InvalidRequest(NO_CONTROLNET)
        started = time.perf_counter()
        try:
            model: Any = ZImageControlNetModel.from_pretrained(str(self.controlnet_dir), torch_dtype=dtype,
                                                                local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise EngineError(f"ControlNet in {self.controlnet_dir} could not be loaded "
                              f"(a diffusers-format folder with config.json is needed): "
                              f"{type(exc).__name__}: {first}") from None
        model = model.to(device).eval().requires_grad_(False)
        if attention_backend not in (None, "default", "flash3"):
            model.set_attention_backend(attention_backend)
        if compile_blocks:
            # Each control block compiled alone, as the transformer's blocks are (regional compile).
            for block in model.control_layers:
                block.compile(fullgraph=True)
        control: Any = ZImageControlNetPipeline(**pipe.components, controlnet=model)
        for attr in INSTANCE_LEVERS:
            if attr in vars(pipe):
                setattr(control, attr, getattr(pipe, attr))
        control.set_progress_bar_config(disable=True)
        self.load_s = round(time.perf_counter() - started, 3)
        params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("control_"))
        note(f"ControlNet loaded from {self.controlnet_dir} in {self.load_s} s "
             f"({params / 1e6:.1f} M control parameters)")
        return control


def control_kwargs(request: GenerationRequest) -> dict[str, Any]:
    """The ControlNet pipeline's inputs for ``request``: the control map as RGB and the strength."""
    from PIL import ImageOps

    assert request.control_image is not None
    image = decode_png(request.control_image).convert("RGB")
    size = (request.width, request.height)
    if image.size != size and request.control_resize == "crop":
        image = ImageOps.fit(image, size)
    elif image.size != size and request.control_resize == "fill":
        image = ImageOps.pad(image, size, color=(0, 0, 0))  # black: no edge, no depth, no limb
    # "just" (and the fitted ones, already at size): the pipeline resizes to width x height.
    return {"control_image": image, "controlnet_conditioning_scale": request.control_strength}
