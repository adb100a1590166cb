"""Tiny LoRA files for the tiny model, built with diffusers and peft (PEFT/diffusers and kohya formats)."""

from __future__ import annotations

from pathlib import Path

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"]


def make_lora(model_dir: Path, out_dir: Path, name: str, *, seed: int = 0, kohya: bool = False) -> Path:
    """``out_dir/name.safetensors``: a random rank-4 LoRA over the tiny transformer's attention and MLP."""
    import torch
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel.from_pretrained(model_dir / "transformer")
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights=False))
    layers = get_peft_model_state_dict(transformer)
    # Random B matrices far from zero, so the LoRA visibly changes a tiny model's pixels.
    layers = {k: v * 8.0 if "lora_B" in k else v for k, v in layers.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    if not kohya:
        tmp = out_dir / f".{name}"
        ZImagePipeline.save_lora_weights(tmp, transformer_lora_layers=layers, safe_serialization=True)
        (tmp / "pytorch_lora_weights.safetensors").rename(path)
        tmp.rmdir()
        return path
    kohya_sd: dict[str, torch.Tensor] = {}
    for key, value in layers.items():
        module, _, kind = key.removeprefix("transformer.").rpartition(".lora_")
        stem = "lora_unet_" + module.replace(".", "_")
        kohya_sd[f"{stem}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value.contiguous()
        kohya_sd[f"{stem}.alpha"] = torch.tensor(4.0)
    save_file(kohya_sd, str(path))
    return path
