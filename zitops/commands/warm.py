"""``zitops warm --config FILE``: precompile into a deployment's compile cache (a thin layer over zitops.warm)."""

from __future__ import annotations

import json

import click

from zitops.commands.options import config_option, json_option
from zitops.errors import ConfigError


@click.command("warm")
@config_option
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 86_400), default=1800.0, show_default=True,
              help="Seconds the engine's set-up and warm-up may take.")
@json_option
def warm(config_path: str | None, timeout_s: float, as_json: bool) -> None:
    """Set up the deployment's engine once and run its warm-up, so the agent's first start finds the caches full.

    Run it on the host (or image) the agent will run on, with the agent's
    config: the caches are per host and per torch/driver version.
    """
    from zitops.commands.locate import announce, find_deployment
    from zitops.warm import warm as run_warm

    found = find_deployment(config_path)
    if found is None:
        raise ConfigError("no deployment found: pass --config FILE (the config.yaml that `zitops deploy` "
                          "rendered), set $ZITOPS_CONFIG, or run from the deployment's directory")
    announce(found)
    report = run_warm(found.config, timeout_s)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not report.get("compiled"):
        click.echo(f"warm: {report['warmup']}")
    else:
        click.echo(f"warm: engine set up in {report['engine_setup_s']:.1f} s, warm-up {report['warmup_s']:.1f} s "
                   f"({len(report['warmup'])} generations)")
    before, after = report["cache_before"], report["cache_after"]
    click.echo(f"cache {report['cache_dir']}: {before['files']} files ({before['mib']} MiB) before, "
               f"{after['files']} files ({after['mib']} MiB) after")
