"""Test support for the GPU lane (tests/gpu): engines on ``cuda:0`` and the numbers to compare them by."""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any

from tests.engine_support import tiny_model_dir
from zitops.engine.diffusers_engine import DiffusersEngine
from zitops.engine.request import GenerationRequest
from zitops.profile import EngineSettings, load_profile

DEVICE = "cuda:0"
MIB = 2**20


def profile_settings(profile: str, **over: Any) -> EngineSettings:
    """A built-in profile's engine settings, with ``over`` replacing some of them."""
    return load_profile(profile).engine.model_copy(update=over)


def gpu_engine(settings: EngineSettings, tmp: Path, *, model: str | None = None) -> DiffusersEngine:
    """A DiffusersEngine set up on ``cuda:0`` (the session's tiny model unless ``model`` says otherwise)."""
    engine = DiffusersEngine(settings, model or str(tiny_model_dir()), state_dir=tmp, cache_dir=tmp / "cache")
    engine.setup(DEVICE)
    return engine


def small_request(seeds: tuple[int, ...] = (1,), **over: Any) -> GenerationRequest:
    """256x256, two steps: enough to run every stage of the pipeline on the GPU in well under a second."""
    fields: dict[str, Any] = {"prompt": "a red cat on a chair", "seeds": seeds, "width": 256, "height": 256,
                              "steps": 2, "sampler": "euler"}
    fields.update(over)
    return GenerationRequest(**fields)


def release(*engines: DiffusersEngine) -> None:
    """Drop engines' pipelines and hand their memory back to the driver (tests share one process)."""
    import torch

    for engine in engines:
        engine.pipe = None
        engine.tiny_vae = None
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def as_array(image: Any) -> Any:
    """A PIL image as float64 RGB, for differences."""
    import numpy as np

    return np.asarray(image.convert("RGB")).astype(np.float64)


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio of two 8-bit images, in dB (inf when equal)."""
    mse = float(((as_array(a) - as_array(b)) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def on_device(module: Any) -> set[str]:
    """The device types a module's parameters live on."""
    return {p.device.type for p in module.parameters()}
