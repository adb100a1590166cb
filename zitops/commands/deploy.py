"""``zitops deploy``: switches mapped onto :class:`zitops.deployment.deploy.DeployRequest`."""

from __future__ import annotations

from pathlib import Path

import click

from zitops.commands.options import deploy_profile_option, model_option, set_option
from zitops.deployment import deploy as core
from zitops.errors import AgentUnavailable, RenderError
from zitops.progress import Progress


def _preflight(plan: core.Plan) -> None:
    """Doctor's config checks, before anything is written or started: a failure names each check."""
    from zitops.preflight.doctor import preflight
    from zitops.preflight.doctor_model import PreflightFailed

    failed = preflight(plan.config, plan.out / "config.yaml")
    if failed:
        parts = "; ".join(f"{c.name}: {c.detail}" + (f" (fix: {c.fix})" if c.fix else "") for c in failed)
        raise PreflightFailed(f"--start refused before anything started: {parts}")


@click.command()
@deploy_profile_option
@click.option("--target", type=click.Choice([*core.TARGETS, "all"]), default="all", show_default=True,
              help="Which deployment to render (all: supervisor, systemd and k8s); the agent files are "
                   "always rendered.")
@click.option("--image", default=None, metavar="REF",
              help="k8s and compose: the zitops image to run [default: zitops:<version>].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("deploy"),
              show_default=True, help="Directory that receives the whole deployment.")
@model_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the agent listens on.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--gpus", default="auto", show_default=True, metavar="auto|0,1",
              help="GPU indices the agent may use, one worker each.")
@set_option
@click.option("--install", is_flag=True,
              help="Also place the files at their FHS paths (/etc/zitops, /etc/systemd/system, ...).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --install: a staging root instead of /.")
@click.option("--store", default="sqlite", show_default=True, metavar="sqlite|postgresql://USER@HOST:PORT/DB",
              help="The job store: each agent's own SQLite, or one PostgreSQL a fleet of agents shares.")
@click.option("--store-password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The store password, one line (never in the URL, the config or a command line).")
@click.option("--images", default=None, metavar="s3://BUCKET[/PREFIX]",
              help="Keep succeeded jobs' images in S3-compatible object storage (pip install 'zitops[s3]').")
@click.option("--s3-endpoint", default=None, metavar="URL", help="The object store's URL [default: AWS S3].")
@click.option("--s3-credentials-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="AWS shared-credentials file for --images (never in the config, a unit or a command line).")
@click.option("--replicas", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Kubernetes: the Deployment's pods, one GPU each (more than 1 needs --store postgresql://...).")
@click.option("--lora-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of LoRA .safetensors files the workers may load [default: <out>/loras].")
@click.option("--controlnet-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of the Z-Image Union ControlNet (diffusers format) [default: none, ControlNet off].")
@click.option("--start", is_flag=True, help="Start the standalone supervisord and wait until the agent is ready.")
@click.option("--force", is_flag=True, help="Overwrite files that were edited since the last deploy.")
def deploy(
    profile: str, target: str, out: Path, model: str, host: str, port: int, gpus: str,
    image: str | None, overrides: tuple[str, ...], install: bool, root: Path | None, store: str,
    store_password_file: Path | None, replicas: int, images: str | None, s3_endpoint: str | None,
    s3_credentials_file: Path | None, lora_dir: Path | None, controlnet_dir: Path | None, start: bool, force: bool,
) -> None:
    """Render config, start script, Supervisor, systemd, Kubernetes or Compose files for a profile."""
    if root is not None and not install:
        raise RenderError("--root only applies together with --install")
    if start and (install or target not in ("supervisor", "all")):
        raise RenderError("--start runs the standalone supervisord from --out: use it without "
                          "--install and with --target supervisor or all")
    if start and not core.agent_available():
        raise AgentUnavailable(
            "the agent is not available yet in this build (no zitops agent command): "
            "render without --start for now"
        )
    if start:
        core.refuse_taken_port(host, port, out)
    request = core.DeployRequest(
        profile=profile,
        targets=core.ALL_TARGETS if target == "all" else (target,),
        out=out, model=model, host=host, port=port, gpus=gpus, overrides=overrides,
        install=install, root=root or Path("/"), force=force, store=store,
        store_password_file=store_password_file, replicas=replicas, lora_dir=lora_dir,
        controlnet_dir=controlnet_dir, image=image, images=images, s3_endpoint=s3_endpoint,
        s3_credentials_file=s3_credentials_file,
    )
    plan = core.plan(request)
    if start:
        _preflight(plan)
    result = core.apply(plan)
    if plan.tier is not None:
        click.echo(f"profile auto: {plan.tier.profile} ({plan.tier.reason})")
    click.echo(f"profile {plan.profile.name} -> {plan.out}")
    for change in result.changes:
        note = "  (left in place: no longer rendered)" if change.action == "stale" else ""
        click.echo(f"  {change.action:<11} {change.path}{note}")
    # With --start, supervisord's start and stop lines are not next steps: the start is done below.
    steps = [s for s in result.next_steps if not (start and s.startswith(("start:", "stop:")))]
    if steps:
        click.echo("next:")
    for step in steps:
        click.echo(f"  {step}")
    if start:
        with Progress() as progress:
            url = core.start(plan, echo=click.echo, progress=progress)
        click.echo(f"agent ready at {url}")
        click.echo(f"stop it with: supervisorctl -c {plan.supervisord_conf} shutdown")
