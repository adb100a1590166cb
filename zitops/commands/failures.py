"""``zitops failures``: list captured failures from a config's store or a running agent."""

from __future__ import annotations

import json
from typing import Any

import click

from zitops.commands.locate import Target, announce, find_deployment
from zitops.commands.options import config_option, json_option, token_file_option, url_option
from zitops.commands.terminal import json_line, printable
from zitops.config import AgentConfig
from zitops.errors import AgentUnavailable


def _from_config(config: AgentConfig, since: float | None, limit: int) -> list[dict[str, Any]]:
    from zitops.logbook.failures import FailureStore

    paths = config.paths.as_paths()
    store = FailureStore(paths["state_dir"], paths["log_dir"])
    return [r.to_dict() for r in store.list(since=since, limit=limit)]


def _from_url(agent: Target, since: float | None, limit: int) -> list[dict[str, Any]]:
    from zitops.commands.client import fetch

    url = agent.url
    params: dict[str, Any] = {"limit": limit}
    if since is not None:
        params["since"] = f"{since:.6f}"  # the API takes epoch seconds with at most 6 decimals
    endpoint = url.rstrip("/") + "/v1/failures"
    resp = fetch(agent, "/v1/failures", params=params)
    if resp.status_code != 200:
        raise AgentUnavailable(f"{endpoint}: HTTP {resp.status_code}: {_error_text(resp.text)}")
    try:
        data = resp.json()
        failures = data["failures"]
        if not isinstance(failures, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise AgentUnavailable(f"{endpoint}: the reply is not {{\"failures\": [...]}} JSON") from None
    return failures


def _error_text(body: str) -> str:
    try:
        data = json.loads(body)
        return printable(str(data.get("error", {}).get("message") or data.get("detail") or body)[:200])
    except (ValueError, AttributeError):
        return printable(" ".join(body.split())[:200])


def _cell(value: Any, width: int) -> str:
    text = "-" if value in (None, "") else printable(" ".join(str(value).split()))
    return text if len(text) <= width else text[: width - 1] + "…"


COLUMNS = (("time", 24), ("kind", 7), ("action", 8), ("job_id", 14), ("worker_id", 9), ("agent_id", 20),
           ("exc_type", 16),
           ("message", 40), ("prompt", 30))


def format_table(records: list[dict[str, Any]]) -> str:
    """Fixed-width rows, newest first, one failure per line."""
    if not records:
        return "no failures recorded"
    lines = ["  ".join(name.upper().ljust(width) for name, width in COLUMNS).rstrip()]
    for rec in records:
        lines.append("  ".join(_cell(rec.get(name), width).ljust(width) for name, width in COLUMNS).rstrip())
    return "\n".join(lines)


@click.command("failures")
@click.option("--since", default=None, metavar="T", help="Only failures since T: 30m, 1h, 2d, 1w or an ISO time.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000), help="At most N records.")
@json_option
@config_option
@url_option
@token_file_option
def failures(since: str | None, limit: int, as_json: bool, config_path: str | None, url: str | None,
             token_file: str | None) -> None:
    """List recorded job failures (newest first): from the deployment's store, or from the agent at --url."""
    from zitops.agent.http.auth import read_client_token
    from zitops.commands.locate import DEFAULT_URL
    from zitops.logbook.failure_query import parse_since

    since_ts = parse_since(since) if since else None
    found = find_deployment(config_path) if url is None or config_path else None
    if found is not None:
        announce(found)
        records = _from_config(found.config, since_ts, limit)
    else:
        announce(None, url)
        records = _from_url(Target(url or DEFAULT_URL, read_client_token(token_file), None), since_ts, limit)
    if as_json:
        for rec in records:
            click.echo(json_line(rec))
        return
    click.echo(format_table(records))
