"""``zitops agent --config FILE``: the resident agent (a thin layer over server.run)."""

from __future__ import annotations

import sys

import click

from zitops.commands.options import config_option
from zitops.errors import ConfigError


@click.command("agent")
@config_option
def agent(config_path: str | None) -> None:
    """Run the resident agent (HTTP API, workers, watchdog) until SIGTERM."""
    if not config_path:
        raise ConfigError("--config FILE is required: the config.yaml that `zitops deploy` rendered")
    from zitops.agent.server import run
    from zitops.config import load_config

    sys.exit(run(load_config(config_path), config_path))
