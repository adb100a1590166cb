"""How an operator on this host reaches a deployment's agent: its loopback URL and a token it may use.

Shared by the operator commands (``zitops.commands.locate``) and doctor's live
checks; imports only the config and the tokens-file parser.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from zitops.config import AgentConfig


def agent_url(config: AgentConfig) -> str:
    """The URL this host reaches the deployment's agent at (a wildcard bind means loopback)."""
    host = config.host
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"http://{host}:{config.port}"
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    shown = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"http://{shown}:{config.port}"


def deployment_token(config: AgentConfig) -> str | None:
    """The deployment's token for an operator: an admin token first; None when there is no readable file."""
    from zitops.tokens_file import parse_token_lines

    name = config.auth.tokens_file
    if not name:
        return None
    try:
        lines = parse_token_lines(Path(name).read_text("utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    ordered = [token for token, admin in lines if admin] + [token for token, admin in lines if not admin]
    return ordered[0] if ordered else None
