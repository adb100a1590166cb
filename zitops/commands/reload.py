"""``zitops reload``: the deployment's agent re-reads its tokens file and log tiers (SIGHUP), without a restart."""

from __future__ import annotations

import os
import signal

import click

from zitops.commands.options import config_option
from zitops.errors import AgentUnavailable, ConfigError


@click.command("reload")
@config_option
def reload(config_path: str | None) -> None:
    """Send the deployment's agent SIGHUP: it reloads the tokens file (a revoked token stops working) and the
    log tiers. Run it as the agent's user or root."""
    from zitops.commands.locate import announce, find_deployment
    from zitops.preflight.doctor_live import listener_pids, runs_config

    found = find_deployment(config_path)
    if found is None:
        raise ConfigError("no deployment found: pass --config FILE, set $ZITOPS_CONFIG, or run from the "
                          "deployment's directory")
    announce(found)
    pids = [pid for pid in listener_pids(found.config.port) if runs_config(pid, found.path)]
    if not pids:
        raise AgentUnavailable(f"no agent of {found.path} listens on port {found.config.port} that this user "
                               "may signal; is it running (zitops status), and are you its user or root?")
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
    click.echo(f"sent SIGHUP to agent pid {', '.join(map(str, pids))}: it reloads its tokens file and log "
               "tiers (zitops logs --level warning shows the counts)")
