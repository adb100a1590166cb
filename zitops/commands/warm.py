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
@click.option("--import", "import_path", type=click.Path(dir_okay=False), default=None,
              help="A compile bundle (from `zitops warm --export`) to load first: the warm-up then compiles nothing "
                   "when it was made for this deployment's key, and says what differs when not.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the compile bundle to FILE, for another host or a fleet's shared volume.")
@json_option
def warm(config_path: str | None, timeout_s: float, import_path: str | None, export_path: str | None,
         as_json: bool) -> None:
    """Set up the deployment's engine once and run its warm-up, so the agent's first start finds the caches full.

    Run it on the host (or image) the agent will run on, with the agent's
    config. What it compiled is saved as a bundle in the deployment's shared
    bundle directory (paths.compile_bundle_dir), which every worker loads:
    compile once per fleet. The bundle is keyed by torch/diffusers versions,
    the GPU's compute capability, the engine knobs and shapes.
    """
    from zitops.commands.locate import announce, find_deployment
    from zitops.warm import warm as run_warm

    found = find_deployment(config_path)
    if found is None:
        raise ConfigError("no deployment found: pass --config FILE (the config.yaml that `zitops deploy` "
                          "rendered), set $ZITOPS_CONFIG, or run from the deployment's directory")
    announce(found)
    report = run_warm(found.config, timeout_s, import_path=import_path, export_path=export_path)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not report.get("compiled"):
        click.echo(f"warm: {report['warmup']}")
    else:
        click.echo(f"warm: engine set up in {report['engine_setup_s']:.1f} s, warm-up {report['warmup_s']:.1f} s "
                   f"({len(report['warmup'])} generations)")
    bundle = report.get("compile_bundle")
    if bundle is not None:
        click.echo(f"import: {bundle['message']}" if import_path else f"bundle: {bundle['message']}")
    counters = report.get("counters")
    if counters is not None:
        click.echo(f"compiled {counters['fxgraph_miss']} inductor graphs, {counters['fxgraph_hit']} from the cache")
    exported = report.get("exported")
    if exported:
        click.echo(f"bundle saved: {exported['path']} ({exported['bytes'] / 2**20:.1f} MiB)"
                   + (f", exported to {exported['exported']}" if exported.get("exported") else ""))
    elif export_path:
        click.echo(f"export: nothing compiled, so no bundle was written to {export_path}")
    before, after = report["cache_before"], report["cache_after"]
    click.echo(f"cache {report['cache_dir']}: {before['files']} files ({before['mib']} MiB) before, "
               f"{after['files']} files ({after['mib']} MiB) after")
