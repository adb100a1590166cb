"""``zitops bench``: plain diffusers vs the zitops engine vs the agent, per profile."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import click

from zitops.commands.options import model_option, set_option
from zitops.progress import Progress


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


@click.command("bench")
@click.option("--profile", "-p", "profiles", multiple=True, default=("designer",), show_default=True,
              help="Profile to measure (repeatable): a built-in name (zitops profiles) or a YAML file.")
@set_option
@model_option
@click.option("--arch", type=click.Choice(["auto", "full"]), default="auto", show_default=True,
              help="full: the real-size architecture with random weights, built on the GPU.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda:N.")
@click.option("--width", type=int, default=None, help="Image width (multiple of 16); default: the profile's.")
@click.option("--height", type=int, default=None, help="Image height (multiple of 16); default: the profile's.")
@click.option("--steps", type=int, default=None, help="Denoising steps; default: the profile's.")
@click.option("--batch", type=int, default=None, help="Images per call; default: the profile's.")
@click.option("--sampler", default=None, help="Sampler; default: the profile's.")
@click.option("--runs", "-n", type=click.IntRange(1, 1000), default=3, show_default=True,
              help="Timed calls per path (the median is reported).")
@click.option("--warmup", type=click.IntRange(0, 100), default=1, show_default=True,
              help="Untimed calls first (compile and warm-up; the first one's time is reported).")
@click.option("--paths", "paths_text", default="baseline,engine,agent", show_default=True,
              help="Which paths to measure: a comma list of baseline, engine, agent.")
@click.option("--sampler-sweep", "sampler_text", default=None, metavar="all|LIST",
              help="Also time each sampler on the engine ('all' or a comma list).")
@click.option("--batch-sweep", "batch_text", default=None, metavar="LIST",
              help="Also time these batch sizes on the engine, e.g. 1,2,4,8; reports the best.")
@click.option("--agent-format", type=click.Choice(["png", "jpeg", "webp"]), default="png", show_default=True,
              help="Image format the agent path asks for (PNG encoding is part of its end-to-end time).")
@click.option("--compare", type=click.Choice(["bf16"]), default=None,
              help="Also run the request with engine.fp8 off and report the fp8 image's deviation "
                   "(PSNR, max abs) from it: how an operator with the real weights checks fp8's quality.")
@click.option("--memory-cap-gib", type=click.FloatRange(1, 1024), default=None, metavar="GIB",
              help="Simulate a smaller card: cap this process's CUDA allocator at GIB once the weights are on "
                   "the host (baseline and engine paths only).")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the first image.")
@click.option("--prompt", default=None, help="Prompt to render (a fixed descriptive one by default).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Compile cache directory (default: a temporary one, so the first compile is cold).")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep the agent's config and logs here (default: a temporary directory, removed).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the results as JSON to this file.")
def bench(profiles: tuple[str, ...], overrides: tuple[str, ...], model: str, arch: str, device: str,
          width: int | None, height: int | None, steps: int | None, batch: int | None, sampler: str | None,
          runs: int, warmup: int, paths_text: str, sampler_text: str | None, batch_text: str | None,
          agent_format: str, compare: str | None, memory_cap_gib: float | None, seed: int, prompt: str | None, cache_dir: str | None, workdir: str | None,
          json_path: str | None) -> None:
    """Benchmark plain diffusers vs the zitops engine vs the agent over HTTP."""
    from zitops.bench.core import (
        DEFAULT_PROMPT,
        BenchOptions,
        parse_batches,
        parse_paths,
        parse_samplers,
        run,
    )
    from zitops.bench.report import render_table
    from zitops.engine.loader import FULL_RANDOM
    from zitops.engine.samplers import resolve_sampler

    chosen = resolve_sampler(sampler)[0] if sampler else None
    opts = BenchOptions(
        profiles=profiles, overrides=overrides, model=FULL_RANDOM if arch == "full" else model, device=device,
        width=width, height=height, steps=steps, batch=batch, sampler=chosen, seed=seed,
        prompt=prompt or DEFAULT_PROMPT, runs=runs, warmup=warmup, paths=parse_paths(paths_text),
        sampler_sweep=parse_samplers(sampler_text) if sampler_text else (),
        batch_sweep=parse_batches(batch_text) if batch_text else (),
        cache_dir=Path(cache_dir) if cache_dir else None, agent_format=agent_format,
        workdir=Path(workdir) if workdir else None, compare=compare, memory_cap_gib=memory_cap_gib,
    )
    # SIGTERM (a timeout, a CI cancel) must unwind through the finally blocks
    # that stop the bench's agent, which runs in its own process group.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with Progress() as progress:
        report = run(opts, echo=lambda line: click.echo(line, err=True), progress=progress)
    click.echo(render_table(report))
    if json_path:
        written = report.write_json(json_path)
        click.echo(f"wrote {written}", err=True)
    failed = [f"{r.profile}/{name}" for r in report.runs for name, res in r.results.items() if res.error]
    if failed:
        raise SystemExit(f"error: {len(failed)} path(s) failed: {', '.join(failed)}")
