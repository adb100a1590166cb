"""Click options defined once and stacked on commands (pip-tools style)."""

from __future__ import annotations

import click

profile_option = click.option(
    "--profile", "-p", default="designer", show_default=True,
    help="Built-in profile name (zitops profiles lists them) or a YAML file.",
)
deploy_profile_option = click.option(
    "--profile", "-p", default="designer", show_default=True,
    help="Built-in profile name, a YAML file, or 'auto': the tier for this host's GPU memory "
         "(designer, lowvram, lowvram-12 or lowvram-8; docs/deploy.md).",
)
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override one profile field, e.g. generation.steps=8 (repeatable).",
)
model_option = click.option(
    "--model", "model", default="tiny", show_default=True, metavar="PATH|tiny",
    help="A local diffusers-format Z-Image-Turbo directory, or 'tiny' (random weights, for demos).",
)
config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="The deployment's config.yaml (as rendered by zitops deploy). Default: $ZITOPS_CONFIG, "
         "./config.yaml, ./deploy/config.yaml, then /etc/zitops/config.yaml.",
)
url_option = click.option(
    "--url", default=None,
    help="Base URL of a running agent (wins over the deployment's). Default: the found deployment's "
         "host and port, else http://127.0.0.1:7860.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
token_file_option = click.option(
    "--token-file", type=click.Path(dir_okay=False), default=None,
    help="File holding the agent's bearer token (first token line). Default: $ZITOPS_TOKEN, "
         "else the deployment's tokens file when readable.",
)
