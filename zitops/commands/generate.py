"""``zitops generate``: one-shot generation without an agent."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from zitops.commands.options import model_option, profile_option, set_option


def output_paths(out: str, batch: int) -> list[Path]:
    """``out`` for one image; ``name-0.png``, ``name-1.png``, ... for a batch."""
    p = Path(out)
    if batch == 1:
        return [p]
    return [p.with_name(f"{p.stem}-{i}{p.suffix}") for i in range(batch)]


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory and rename, so no half file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # mkstemp creates 0600; an image is an ordinary file, so honour the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


@click.command()
@profile_option
@set_option
@click.option("--prompt", required=True, help="What to draw.")
@model_option
@click.option("--width", type=int, default=None, help="Image width (multiple of 16).")
@click.option("--height", type=int, default=None, help="Image height (multiple of 16).")
@click.option("--steps", type=int, default=None, help="Denoising steps.")
@click.option("--seed", type=int, default=None, help="Seed of the first image (-1: random).")
@click.option("--batch", type=int, default=None, help="Number of images (seeds seed, seed+1, ...).")
@click.option("--sampler", default=None, help="euler, euler_a, heun, dpmpp_2m, dpmpp_2m_sde, unipc, lcm "
              "(A1111 names such as 'DPM++ 2M Karras' work too).")
@click.option("--schedule", default=None, help="simple, karras or exponential.")
@click.option("--guidance", type=float, default=None, help="CFG scale (the turbo model wants 0).")
@click.option("--negative-prompt", default=None, help="Used only when guidance > 0.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Output file (.png, .jpg or .webp); a batch adds -0, -1, ...")
@click.option("--arch", type=click.Choice(["auto", "full"]), default="auto", show_default=True,
              help="full: the real-size architecture with random weights, built on the GPU (benchmarks).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda:N.")
def generate(profile: str, overrides: tuple[str, ...], prompt: str, model: str, width: int | None,
             height: int | None, steps: int | None, seed: int | None, batch: int | None,
             sampler: str | None, schedule: str | None, guidance: float | None,
             negative_prompt: str | None, out: str, arch: str, device: str) -> None:
    """Generate images once, without an agent."""
    from zitops.engine.loader import FULL_RANDOM, resolve_model
    from zitops.engine.output import encode_image, format_for_path
    from zitops.engine.request import request_from_profile, validate_request
    from zitops.engine.samplers import resolve_sampler, resolve_schedule
    from zitops.engine.tiny import TINY_NOTICE, is_tiny
    from zitops.profile import load_profile

    prof = load_profile(profile, overrides)
    chosen: dict[str, Any] = {}
    if sampler is not None:
        chosen["sampler"], implied = resolve_sampler(sampler)
        if implied is not None:
            chosen["schedule"] = implied
    if schedule is not None:
        chosen["schedule"] = resolve_schedule(schedule)
    fmt = format_for_path(out, prof.generation.output_format)
    req = request_from_profile(prof, prompt, width=width, height=height, steps=steps, seed=seed,
                               batch=batch, guidance=guidance, negative_prompt=negative_prompt,
                               output_format=fmt, **chosen)
    # A refused request is refused here, before any model loads or file is written.
    validate_request(req)
    model_name = FULL_RANDOM if arch == "full" else model
    if model_name != FULL_RANDOM:
        path = resolve_model(model_name)
        if is_tiny(path):
            click.secho(f"note: {TINY_NOTICE} ({path})", fg="yellow", err=True)
    else:
        click.secho("note: --arch full uses random weights: images are noise; for timing only",
                    fg="yellow", err=True)

    from zitops.engine.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(prof.engine, model_name)
    engine.setup(_device(device))
    done = {"n": 0}
    length = req.steps * req.batch
    make_bar: Any = click.progressbar
    stderr: Any = sys.stderr
    with make_bar(length=length, label="generating", file=stderr, show_eta=False) as bar:
        def progress(step: int, total: int) -> None:
            # Heun calls back twice per step and an OOM split restarts the
            # count; the bar only moves forward and never past its length.
            if done["n"] < length:
                bar.update(1)
                done["n"] += 1

        result = engine.generate(req, progress)
    paths = output_paths(out, req.batch)
    for path, image, s in zip(paths, result.images, result.seeds, strict=True):
        params = {**{k: result.info.get(k) for k in ("sampler", "schedule", "steps", "size", "model")},
                  "prompt": req.prompt, "negative_prompt": req.negative_prompt, "seed": s,
                  "guidance": req.guidance, "profile": req.profile, "tiny": result.info.get("tiny")}
        write_atomic(path, encode_image(image, fmt, params))
        click.echo(str(path))
    per_image = result.seconds / max(1, req.batch)
    click.echo(f"{req.batch} image(s) in {result.seconds:.2f} s ({per_image:.2f} s/image), "
               f"seeds {', '.join(str(s) for s in result.seeds)}", err=True)
    if result.info.get("tiny"):
        click.secho(f"note: {TINY_NOTICE}", fg="yellow", err=True)
