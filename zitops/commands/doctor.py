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
              help="A config.yaml that zitops deploy rendered: its paths, host, port, model and profile. "
                   "Default (without --out): $ZITOPS_CONFIG, ./config.yaml, ./deploy/config.yaml, "
                   "then /etc/zitops/config.yaml.")
@click.option("--target", type=click.Choice(["supervisor", "systemd", "k8s"]), default="supervisor",
              show_default=True, help="The process manager to check for.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Check this zitops deploy --out layout instead of a found deployment "
                   "(directories under it; default ./deploy when no deployment is found).")
@json_option
def doctor(profile: str | None, model: str | None, port: int | None, config_path: str | None,
           target: str, out: Path | None, as_json: bool) -> None:
    """Check that this host can run a profile: GPU, model files, disk, port, directories, services."""
    from zitops.commands.locate import announce, find_deployment
    from zitops.preflight.doctor import DoctorRequest, run

    if out is None:
        found = find_deployment(config_path)
        announce(found, fallback="checking the switches' profile and ./deploy's layout")
        if found is not None:
            config_path = str(found.path)
    report = run(DoctorRequest(profile=profile, model=model, port=port, config=config_path,
                               target=target, out=out or Path("deploy")))
    click.echo(report.to_json() if as_json else "\n".join(report.lines()))
    if not report.ok:
        raise report.error()
