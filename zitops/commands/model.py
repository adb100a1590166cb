"""``zitops model``: build the tiny demo model, or check a weights directory."""

from __future__ import annotations

import json

import click

from zitops.commands.options import json_option
from zitops.errors import ModelError
from zitops.progress import Progress


@click.group()
def model() -> None:
    """Manage model weights (make-tiny, check)."""


@model.command("make-tiny")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the random weights.")
def make_tiny_cmd(directory: str, seed: int) -> None:
    """Write a tiny random Z-Image pipeline (real architecture, images are noise) to DIRECTORY."""
    from zitops.engine.loader import check_model
    from zitops.engine.offline import force_offline
    from zitops.engine.tiny import TINY_NOTICE, make_tiny

    force_offline()
    with Progress() as progress:
        out = make_tiny(directory, seed=seed, progress=progress)
    result = check_model(out)
    if not result.ok:
        raise ModelError(f"{out}: the tiny model came out incomplete: {', '.join(result.missing)}")
    click.echo(f"wrote {out} ({result.size_bytes / 2**20:.1f} MiB); {TINY_NOTICE}")


@model.command("check")
@click.argument("path")
@json_option
def check_cmd(path: str, as_json: bool) -> None:
    """Check that PATH (a directory, or a repo id in the local HF cache) holds complete weights."""
    from zitops.engine.loader import check_model, find_in_hf_cache

    target = path
    if "/" in path and not path.startswith((".", "/", "~")):
        cached = find_in_hf_cache(path)
        if cached is not None:
            target = str(cached)
    result = check_model(target)
    if as_json:
        click.echo(json.dumps({"path": str(result.path), "ok": result.ok, "tiny": result.tiny,
                               "components": result.components, "missing": list(result.missing),
                               "size_bytes": result.size_bytes}, indent=2))
    else:
        click.echo(result.summary())
    if not result.ok:
        raise ModelError(f"{result.path}: missing {', '.join(result.missing)}; download a diffusers-format "
                         "Z-Image-Turbo snapshot and pass --model PATH")
