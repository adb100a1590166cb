"""Bearer tokens: read from a secret file, compared in constant time.

Tokens never come from the config itself, never appear in /status, errors or
logs, and the agent refuses to listen beyond loopback without them unless an
authenticating proxy is declared in front of it.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from zitops.config import AgentConfig
from zitops.errors import ConfigError
from zitops.tokens_file import (
    ADMIN_PREFIX,
    MIN_TOKEN_CHARS,
    Tokens,
    parse_token_lines,
    parse_tokens,
    read_tokens_file,
)

__all__ = ["ADMIN_PREFIX", "MIN_TOKEN_CHARS", "LiveTokens", "Tokens", "parse_token_lines", "parse_tokens",
           "read_tokens_file"]


class LiveTokens:
    """The tokens in force, swapped whole when the tokens file is reloaded (SIGHUP, ``zitops reload``).

    One owner writes it (the server's signal loop); readers take ``current`` once
    per request, so a request never sees half of an old set and half of a new one.
    """

    def __init__(self, tokens: Tokens) -> None:
        self.current = tokens


def load_tokens(config: AgentConfig) -> frozenset[str]:
    """The accepted bearer tokens, or an empty set when no tokens file is configured."""
    return read_tokens(config).all


def read_tokens(config: AgentConfig) -> Tokens:
    """The tokens file's tokens and admins; ConfigError for a file that is unsafe or unusable."""
    name = config.auth.tokens_file
    if not name:
        return Tokens()
    return read_tokens_file(Path(name))


def check_bind_policy(config: AgentConfig, tokens: frozenset[str]) -> None:
    """Raise ConfigError when binding beyond loopback without tokens or a declared proxy."""
    if config.is_loopback or tokens or config.auth.behind_proxy:
        return
    raise ConfigError(
        f"host {config.host} is not a loopback address and no tokens are configured; "
        "set auth.tokens_file, or set auth.behind_proxy: true if an authenticating proxy "
        "fronts the agent, or bind 127.0.0.1"
    )


def token_matches(header: str | None, tokens: frozenset[str]) -> bool:
    """True when ``Authorization: Bearer <token>`` names one of ``tokens`` (constant time)."""
    return match_token(header, tokens) is not None


def match_token(header: str | None, tokens: frozenset[str]) -> str | None:
    """The token ``Authorization: Bearer <token>`` names, if it is one of ``tokens``; compared in constant time."""
    if not header:
        return None
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    given = presented.strip().encode("utf-8", "surrogateescape")
    found = None
    # Compare against every token without short-circuiting, so timing says
    # nothing about which token (or how much of one) matched.
    for token in tokens:
        if hmac.compare_digest(given, token.encode("utf-8")):
            found = token
    return found


def read_client_token(token_file: str | None) -> str | None:
    """The token a client sends: the first token in ``token_file``, else $ZITOPS_TOKEN."""
    if token_file:
        try:
            tokens = parse_tokens(Path(token_file).read_text("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"--token-file: cannot read {token_file}: {reason}") from None
        if not tokens:
            raise ConfigError(f"--token-file: {token_file} holds no token")
        return tokens[0]
    env = os.environ.get("ZITOPS_TOKEN", "").strip()
    return env or None
