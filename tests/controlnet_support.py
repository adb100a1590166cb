"""Tiny Union ControlNet weights for the tiny model, built with diffusers (random, in diffusers format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zitops.engine.tiny import TINY_TRANSFORMER


def tiny_controlnet_config() -> dict[str, Any]:
    """A Union-2.x-shaped ControlNet (control blocks, a control noise refiner) at the tiny model's size."""
    t = TINY_TRANSFORMER
    return dict(control_layers_places=[0, 1], control_refiner_layers_places=[0],
                add_control_noise_refiner="control_noise_refiner", control_in_dim=16,
                all_patch_size=t["all_patch_size"], all_f_patch_size=t["all_f_patch_size"], dim=t["dim"],
                n_refiner_layers=t["n_refiner_layers"], n_heads=t["n_heads"], n_kv_heads=t["n_kv_heads"],
                norm_eps=t["norm_eps"], qk_norm=t["qk_norm"])


def make_controlnet(out_dir: Path, *, seed: int = 0) -> Path:
    """``out_dir``: a random ControlNet saved with ``save_pretrained`` (config.json + safetensors)."""
    import torch
    from diffusers import ZImageControlNetModel

    torch.manual_seed(seed)
    model: Any = ZImageControlNetModel(**tiny_controlnet_config())
    with torch.no_grad():
        # diffusers zero-initialises before_proj/after_proj (a fresh ControlNet adds nothing);
        # random values far from zero make the tiny model's pixels visibly follow the control map.
        for name, param in model.named_parameters():
            if "proj" in name or param.ndim >= 2:
                param.normal_(0.0, 0.5 if "proj" in name else 0.1)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir
