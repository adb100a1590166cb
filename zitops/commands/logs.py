"""``zitops logs``: the deployment's agent and worker logs, merged by time, without knowing file paths."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from zitops.commands.options import config_option
from zitops.commands.terminal import printable
from zitops.errors import ConfigError


@click.command("logs")
@config_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they are written (Ctrl-C stops).")
@click.option("--level", type=click.Choice(["debug", "info", "warning", "error", "critical"]), default="debug",
              show_default=True, help="Only lines at this level or above.")
@click.option("--since", default=None, metavar="T", help="Only lines since T: 30m, 1h, 2d, 1w or an ISO time.")
@click.option("--lines", "-n", "tail", type=click.IntRange(0, 1_000_000), default=None, metavar="N",
              help="Only the last N lines of the backlog (default: all, or 50 with --follow).")
@click.option("--json", "as_json", is_flag=True, default=None,
              help="JSON lines (the default when stdout is not a terminal); else one readable line each.")
def logs(config_path: str | None, follow: bool, level: str, since: str | None, tail: int | None,
         as_json: bool | None) -> None:
    """Show the deployment's logs (agent and workers): pretty on a terminal, JSON lines in a pipe."""
    from zitops.commands.locate import announce, find_deployment
    from zitops.logbook.failure_query import parse_since
    from zitops.logbook.logview import Filter, pretty, read
    from zitops.logbook.logview import follow as follow_logs

    found = find_deployment(config_path)
    if found is None:
        raise ConfigError("no deployment found: pass --config FILE, set $ZITOPS_CONFIG, or run from the "
                          "deployment's directory")
    announce(found)
    log_dir = Path(found.config.paths.log_dir)
    if not log_dir.is_dir():
        raise ConfigError(f"{log_dir}: no log directory yet; has the agent run?")
    flt = Filter(level=level, since=parse_since(since) if since else None)
    use_json = as_json if as_json is not None else not sys.stdout.isatty()

    def show(record: dict[str, object]) -> None:
        click.echo(json.dumps(record, ensure_ascii=False) if use_json else printable(pretty(record)))

    try:
        for record in read(log_dir, flt, tail=tail if tail is not None else (50 if follow else None)):
            show(record)
        if follow:
            for record in follow_logs(log_dir, flt):
                show(record)
    except PermissionError as exc:
        raise ConfigError(f"{exc.filename}: not readable by this user; run as the deployment's user "
                          "or one in its group") from None
    except KeyboardInterrupt:
        return
