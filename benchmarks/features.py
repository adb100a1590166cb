"""GPU costs of the image-server features (issue 15), one process, real-size random weights.

Measures, at the designer profile's size and steps: txt2img seconds per
image; the per-step progress hook alone and with a preview every step (the
worker's own StepHook, PNG included), with the linear latent preview and
with the VAE one; ControlNet (a real-size Union-2.1-shaped ControlNet built
here with random weights, saved and loaded the way a deployment loads it):
its first request (load + compile) and steady s/image; LoRA hot-swap
(``engine.lora_hotswap_rank``): the first load and the first image after
each switch. img2img (``--img2img``) and the adapter-path LoRA switches
(``--lora-adapters``) were measured on 2026-11-29 and are optional. The JSON
is rewritten after each section, so a run cut short keeps what it measured.
``--tiny`` runs it all on the CPU with the tiny model (a dry run).
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

from PIL import Image

_PIPE_ENDS: list[Any] = []  # the far ends, kept open while the benchmark runs


def hook(previews: bool) -> Any:
    """The worker's own StepHook (zitops.worker.steering.JobSteering) on a pipe nobody reads from."""
    from multiprocessing import Pipe

    from zitops.worker.steering import JobSteering

    conn, other = Pipe()
    _PIPE_ENDS.append(other)
    steering = JobSteering(conn, lambda msg: None, "bench", [])
    steering.previews = previews
    return steering


def timed(engine: Any, req: Any, runs: int, progress: Any = None) -> float:
    def one() -> None:
        engine.generate(req, progress)
        if progress is not None:
            progress.flush()  # the worker sends the Result only after the last preview is out

    one()  # warm (compile, cudnn autotune)
    sync()
    start = time.perf_counter()
    for _ in range(runs):
        one()
    sync()
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


def union_controlnet(tiny: bool) -> dict[str, Any]:
    """The Union ControlNet 2.1's config (hlky/Z-Image-Turbo-Fun-Controlnet-Union-2.1 config.json), or tiny."""
    from zitops.engine.full import FULL_TRANSFORMER
    from zitops.engine.tiny import TINY_TRANSFORMER

    t = TINY_TRANSFORMER if tiny else FULL_TRANSFORMER
    places = [0, 1] if tiny else list(range(0, 30, 2))
    return dict(control_layers_places=places, control_refiner_layers_places=list(range(t["n_refiner_layers"])),
                add_control_noise_refiner="control_noise_refiner", control_in_dim=33,
                all_patch_size=t["all_patch_size"], all_f_patch_size=t["all_f_patch_size"], dim=t["dim"],
                n_refiner_layers=t["n_refiner_layers"], n_heads=t["n_heads"], n_kv_heads=t["n_kv_heads"],
                norm_eps=t["norm_eps"], qk_norm=t["qk_norm"])


def save_controlnet(directory: Path, device: str, dtype: Any, tiny: bool) -> dict[str, Any]:
    """A random ControlNet built on ``device`` and saved in diffusers format; its size and the time taken."""
    import torch
    from diffusers import ZImageControlNetModel

    from zitops.engine.full import _default_dtype, _reinit

    start = time.perf_counter()
    with torch.device(device), _default_dtype(dtype):
        model: Any = ZImageControlNetModel(**union_controlnet(tiny))
    _reinit(model, 3)  # every matrix random (diffusers zero-initialises the projections)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(directory), safe_serialization=True)
    del model
    return {"params": params, "build_and_save_s": round(time.perf_counter() - start, 2)}


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def first_image(engine: Any, req: Any) -> float:
    sync()
    start = time.perf_counter()
    engine.generate(req)
    sync()
    return round(time.perf_counter() - start, 4)


def main() -> None:
    """Run every measurement and write the JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="designer")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU: a dry run")
    parser.add_argument("--img2img", action="store_true")
    parser.add_argument("--lora-adapters", action="store_true", help="also the adapter path's switches")
    parser.add_argument("--hotswap-rank", type=int, default=16)
    parser.add_argument("--set", action="append", default=[], help="profile override, e.g. engine.compile=false")
    args = parser.parse_args()

    from dataclasses import replace

    from zitops.engine.diffusers_engine import DiffusersEngine
    from zitops.engine.loader import FULL_RANDOM
    from zitops.engine.precision.knobs import torch_dtype
    from zitops.engine.request import request_from_profile
    from zitops.profile import load_profile

    sets = ["engine.precision=fp32", "engine.vae_precision=fp32", "generation.width=64", "generation.height=64",
            "generation.steps=2"] if args.tiny else []
    sets += args.set
    profile = load_profile(args.profile, sets)
    work = Path(tempfile.mkdtemp(prefix="zitops-features-"))
    lora_dir, cn_dir = work / "loras", work / "controlnet"
    lora_dir.mkdir()
    device = "cpu" if args.tiny else "cuda:0"
    model = "tiny" if args.tiny else FULL_RANDOM
    engine = DiffusersEngine(profile.engine, model, lora_dir=lora_dir, controlnet_dir=cn_dir, state_dir=work)
    engine.setup(device)
    base = request_from_profile(profile, "a lighthouse at dusk", seed=1)
    out: dict[str, Any] = {"profile": profile.name, "size": f"{base.width}x{base.height}", "steps": base.steps,
                           "effective": engine.effective}

    def save() -> None:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")

    out["txt2img_s"] = timed(engine, base, args.runs)
    out["progress_hook_s"] = timed(engine, base, args.runs, hook(previews=False))
    out["preview_every_step_latent_s"] = timed(engine, base, args.runs, hook(previews=True))
    latent_settings = engine.settings
    engine.settings = latent_settings.model_copy(update={"preview_decode": "vae"})
    out["preview_every_step_vae_s"] = timed(engine, base, args.runs, hook(previews=True))
    engine.settings = latent_settings
    save()

    # ControlNet: built here, loaded by the engine from disk on the first control request.
    out["controlnet"] = cn = save_controlnet(cn_dir, device, torch_dtype(profile.engine.precision), args.tiny)
    cn["config"] = {k: v for k, v in union_controlnet(args.tiny).items() if "places" in k or "control" in k}
    mem_before = engine.memory().allocated_mib
    control_map = Image.new("RGB", (base.width, base.height))
    control_map.paste((255, 255, 255), (base.width // 4, base.height // 4, base.width // 4 + 8, base.height * 3 // 4))
    png = io.BytesIO()
    control_map.save(png, format="PNG")
    control = replace(base, control_image=base64.b64encode(png.getvalue()).decode(), control_strength=0.75)
    cn["first_request_s"] = first_image(engine, control)
    cn["load_s"] = engine.controlnets.load_s
    cn["allocated_mib_added"] = round(engine.memory().allocated_mib - mem_before)
    cn["control_s"] = timed(engine, control, args.runs)
    cn["txt2img_after_s"] = timed(engine, base, args.runs)
    save()

    if args.img2img:
        init = io.BytesIO()
        Image.new("RGB", (base.width, base.height), (120, 80, 40)).save(init, format="PNG")
        img2img = replace(base, init_image=base64.b64encode(init.getvalue()).decode(), strength=0.6)
        out["img2img_strength_0.6_s"] = timed(engine, img2img, args.runs)
        save()

    # LoRA hot-swap: one slot of --hotswap-rank; single-LoRA switches copy weights in place.
    make_lora(engine.pipe.transformer, lora_dir / "a.safetensors", 1)
    make_lora(engine.pipe.transformer, lora_dir / "b.safetensors", 2, rank=8)
    engine.loras.hotswap_rank = args.hotswap_rank
    lora: dict[str, Any] = {"hotswap_rank": args.hotswap_rank}
    out["lora_hotswap"] = lora
    steps = [("first_load_a", (("a", 1.0),)), ("swap_to_b", (("b", 1.0),)), ("swap_to_a", (("a", 1.0),)),
             ("swap_to_b_again", (("b", 1.0),)), ("weight_0.5_b", (("b", 0.5),)), ("to_none", ()),
             ("back_to_a", (("a", 1.0),))]
    if args.lora_adapters:
        steps.append(("a_and_b_adapters", (("a", 0.5), ("b", 0.5))))
    for label, loras in steps:
        try:
            lora[label + "_first_image_s"] = first_image(engine, replace(base, loras=loras))
        except Exception as exc:  # noqa: BLE001 - record why, keep the numbers measured so far
            lora[label + "_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            break
        save()
    lora["steady_a_s"] = timed(engine, replace(base, loras=(("a", 1.0),)), args.runs)
    lora["notes"] = engine.notes
    save()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
