"""GPU costs of the image-server features (issue 15), one process, real-size random weights.

Measures, at the designer profile's size and steps: txt2img and img2img
(strength 0.6) seconds per image; the per-step progress hook alone and with
a preview every step (the worker's own StepHook, PNG included); a LoRA's
first load, the switch between two loaded LoRAs and back to none, and the
first image after each switch (which pays any recompile). JSON to --out.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any


class Hook:
    """The worker's StepHook without a pipe: counts steps, makes previews when told."""

    def __init__(self, previews: bool) -> None:
        self.previews = previews
        self.steps = 0
        self.pngs = 0

    def __call__(self, step: int, total: int) -> None:
        self.steps += 1

    def wants_preview(self, step: int) -> bool:
        return self.previews

    def preview(self, step: int, image: Any) -> None:
        from zitops.worker.steering import preview_png

        preview_png(image)
        self.pngs += 1

    def stop(self) -> str | None:
        return None


def timed(engine: Any, req: Any, runs: int, progress: Any = None) -> float:
    import torch

    engine.generate(req, progress)  # warm (compile, cudnn autotune)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(runs):
        engine.generate(req, progress)
    torch.cuda.synchronize()
    return round((time.perf_counter() - start) / runs, 4)


def make_lora(transformer: Any, path: Path, seed: int, rank: int = 16) -> None:
    """A random rank-``rank`` LoRA over every block's attention and MLP, in the kohya format."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for name, module in transformer.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and leaf in ("to_q", "to_k", "to_v", "w1", "w2", "w3") \
                and name.startswith("layers."):
            stem = "lora_unet_" + name.replace(".", "_")
            tensors[f"{stem}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=gen) * 0.01
            tensors[f"{stem}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=gen) * 0.01
            tensors[f"{stem}.alpha"] = torch.tensor(float(rank))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(path))


def main() -> None:
    """Run every measurement and write the JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="designer")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from PIL import Image

    from zitops.engine.diffusers_engine import DiffusersEngine
    from zitops.engine.loader import FULL_RANDOM
    from zitops.engine.request import request_from_profile
    from zitops.profile import load_profile

    profile = load_profile(args.profile)
    lora_dir = Path(tempfile.mkdtemp(prefix="zitops-loras-"))
    engine = DiffusersEngine(profile.engine, FULL_RANDOM, lora_dir=lora_dir)
    engine.setup("cuda:0")
    base = request_from_profile(profile, "a lighthouse at dusk", seed=1)
    out: dict[str, Any] = {"profile": profile.name, "size": f"{base.width}x{base.height}", "steps": base.steps,
                           "effective": engine.effective}
    out["txt2img_s"] = timed(engine, base, args.runs)
    out["progress_hook_s"] = timed(engine, base, args.runs, Hook(previews=False))
    out["preview_every_step_s"] = timed(engine, base, args.runs, Hook(previews=True))
    init = Image.new("RGB", (base.width, base.height), (120, 80, 40))
    png = io.BytesIO()
    init.save(png, format="PNG")
    from dataclasses import replace

    img2img = replace(base, init_image=base64.b64encode(png.getvalue()).decode(), strength=0.6)
    out["img2img_strength_0.6_s"] = timed(engine, img2img, args.runs)
    make_lora(engine.pipe.transformer, lora_dir / "a.safetensors", 1)
    make_lora(engine.pipe.transformer, lora_dir / "b.safetensors", 2)
    lora: dict[str, Any] = {}
    for label, loras in (("first_load_a", (("a", 1.0),)), ("first_load_b", (("b", 1.0),)),
                         ("switch_to_a", (("a", 0.8),)), ("switch_to_none", ()), ("back_to_b", (("b", 1.0),)),
                         ("a_and_b", (("a", 0.5), ("b", 0.5)))):
        import torch

        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.generate(replace(base, loras=loras))
        torch.cuda.synchronize()
        lora[label + "_first_image_s"] = round(time.perf_counter() - start, 4)
    lora["with_lora_steady_s"] = timed(engine, replace(base, loras=(("a", 1.0),)), args.runs)
    lora["no_lora_after_loras_s"] = timed(engine, base, args.runs)
    lora["notes"] = engine.notes
    out["lora"] = lora
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
