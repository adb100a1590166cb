"""``zitops doctor``: switches mapped onto :class:`zitops.preflight.doctor.DoctorRequest`."""

from __future__ import annotations

from pathlib import Path

import click

from zitops.commands.options import json_option


@click.command("doctor")
@click.option("--profile", "-p", default=None, help="Profile to check (built-in name or YAML file). "
              "Default: the --config's, else designer.")
@click.option("--model", default=None, metavar="PATH|tiny",
              help="Weights to check. Default: the --config's, else tiny.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port the agent will listen on. Default: the --config's, else 7860.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="A config.yaml that zitops deploy rendered: its paths, host, port, model and profile.")
@click.option("--target", type=click.Choice(["supervisor", "systemd", "k8s"]), default="supervisor",
              show_default=True, help="The process manager to check for.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("deploy"),
              show_default=True, help="Without --config: the zitops deploy --out whose directories to check.")
@json_option
def doctor(profile: str | None, model: str | None, port: int | None, config_path: str | None,
           target: str, out: Path, as_json: bool) -> None:
    """Check that this host can run a profile: GPU, model files, disk, port, directories, services."""
    from zitops.preflight.doctor import DoctorRequest, run

    report = run(DoctorRequest(profile=profile, model=model, port=port, config=config_path,
                               target=target, out=out))
    click.echo(report.to_json() if as_json else "\n".join(report.lines()))
    if not report.ok:
        raise report.error()
