"""``zitops status`` and ``zitops health``: talk to a running agent over HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import click
import httpx

from zitops.commands.locate import Target, resolve_target
from zitops.commands.options import config_option, json_option, token_file_option, url_option
from zitops.commands.terminal import printable
from zitops.errors import AgentUnavailable, Unauthorized, ZitopsError

TIMEOUT_S = 10.0


def fetch(agent: Target, path: str, params: dict[str, Any] | None = None,
          method: str = "GET") -> httpx.Response:
    """``method url + path`` with the bearer token if one is known; one-line errors for the usual failures."""
    url, token = agent.url, agent.token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url + path, params=params, headers=headers, timeout=TIMEOUT_S)
    except httpx.ConnectError:
        raise AgentUnavailable(f"cannot connect to the agent at {url}: connection refused or host unreachable; is it running?") from None
    except httpx.TimeoutException:
        raise AgentUnavailable(f"the agent at {url} did not answer within {TIMEOUT_S:g} s") from None
    except httpx.HTTPError as exc:
        raise AgentUnavailable(f"cannot talk to the agent at {url}: {type(exc).__name__}") from None
    if response.status_code == 401:
        raise Unauthorized(
            f"the agent at {url} wants a bearer token: pass --token-file FILE, set ZITOPS_TOKEN, or run as a "
            "user who can read the deployment's tokens file"
            if not token else f"the agent at {url} rejected the token"
        )
    return response


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise AgentUnavailable(f"{response.url}: answered {response.status_code} without JSON; is this a zitops agent?") from None


def _mib(value: Any) -> str:
    return f"{value / 1024:.1f}G" if isinstance(value, (int, float)) else "-"


def _ago(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return str(ts or "-")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render_status(data: dict[str, Any]) -> str:
    """A readable summary of the /status JSON, every character printable (client text is escaped)."""
    return "\n".join(printable(line) for line in _status_lines(data))


def _status_lines(data: dict[str, Any]) -> list[str]:
    model = data.get("model")
    model_name = model.get("name") if isinstance(model, dict) else model
    if isinstance(model, dict) and model.get("note"):
        # The tiny model's images are noise: say so wherever it shows.
        model_name = f"{model_name} ({model['note']})"
    queue = data.get("queue") or {}
    lines = [
        f"profile   {data.get('profile', '-')}",
        f"model     {model_name or '-'}" + (f"  (engine {data['engine']})" if data.get("engine") else ""),
        f"ready     {'yes' if data.get('ready') else 'no'}"
        + (f"  ({'; '.join(map(str, data.get('reasons') or []))})" if data.get("reasons") else "")
        + ("  DRAINING" if data.get("draining") else ""),
        f"queue     {queue.get('depth', '-')}/{queue.get('cap', '-')} waiting, {queue.get('running', 0)} running",
        f"uptime    {data.get('uptime_s', '-')} s",
        "",
    ]
    workers = data.get("workers") or []
    rows = [["WORKER", "GPU", "PID", "STATE", "JOBS", "VRAM USED/TOTAL", "CURRENT JOB"]]
    for w in workers:
        vram = w.get("vram") or {}
        used = vram.get("device_used_mib", w.get("vram_used_mib"))
        total = vram.get("device_total_mib", w.get("vram_total_mib"))
        sim = " (sim)" if vram.get("simulated") else ""
        gpu = w.get("gpu")
        rows.append([str(w.get("id", "-")), "cpu" if gpu is None else str(gpu), str(w.get("pid") or "-"),
                     str(w.get("state", "-")), str(w.get("jobs_done", "-")),
                     f"{_mib(used)}/{_mib(total)}{sim}", str(w.get("current_job") or "-")])
    lines += _table(rows) if workers else ["no workers"]
    failures = data.get("recent_failures") or []
    lines += ["", f"recent failures: {len(failures)}"]
    for f in failures[:10]:
        message = " ".join(str(f.get("message", "")).split())[:100]
        lines.append(f"  {f.get('time') or _ago(f.get('ts'))}  job {f.get('job_id') or '-'}  "
                     f"{f.get('exc_type', '')}: {message}  -> {f.get('action', '-')}")
    recoveries = data.get("recoveries") or []
    lines += [f"recoveries: {len(recoveries)}"]
    for r in recoveries[-10:]:
        lines.append(f"  {_ago(r.get('time'))}  {r.get('kind', '-')}  worker {r.get('worker') or '-'}: "
                     f"{str(r.get('reason', ''))[:100]}")
    if data.get("scope") == "tenant":
        lines += ["", "(reduced view: this token is not an admin token; failures, recoveries and job ids "
                      "need an 'admin:' token)"]
    return lines


@click.command()
@config_option
@url_option
@json_option
@token_file_option
def status(config_path: str | None, url: str | None, as_json: bool, token_file: str | None) -> None:
    """Show a running agent's workers, queue and recent failures."""
    agent = resolve_target(url, config_path, token_file)
    url = agent.url
    response = fetch(agent, "/status")
    data = _json(response)
    if response.status_code != 200:
        message = data.get("error", {}).get("message") if isinstance(data, dict) else None
        raise ZitopsError(printable(f"{url}/status answered {response.status_code}: {message or 'no detail'}"))
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else render_status(data))


@click.command()
@config_option
@url_option
@token_file_option
@click.option("--live", is_flag=True, help="Ask /livez (the process serves) instead of /readyz (it takes jobs).")
def health(config_path: str | None, url: str | None, token_file: str | None, live: bool) -> None:
    """Exit 0 only when the agent answers /readyz (or, with --live, /livez) with 200."""
    response = fetch(resolve_target(url, config_path, token_file), "/livez" if live else "/readyz")
    data = _json(response)
    if response.status_code == 200:
        click.echo("live" if live else "ready")
        return
    reasons = data.get("reasons") if isinstance(data, dict) else None
    raise AgentUnavailable(printable(
        f"not {'live' if live else 'ready'} ({response.status_code}): {'; '.join(map(str, reasons or [])) or 'no reason given'}"))
