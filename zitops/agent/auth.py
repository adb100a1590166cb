"""Bearer tokens: read from a secret file, compared in constant time.

Tokens never come from the config itself, never appear in /status, errors or
logs, and the agent refuses to listen beyond loopback without them unless an
authenticating proxy is declared in front of it.
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from zitops.config import AgentConfig
from zitops.errors import ConfigError

MIN_TOKEN_CHARS = 16


def parse_tokens(text: str) -> list[str]:
    """Tokens from a tokens file's text: one per line, blank lines and ``#`` comments ignored."""
    tokens = []
    for line in text.splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            tokens.append(token)
    return tokens


def load_tokens(config: AgentConfig) -> frozenset[str]:
    """The accepted bearer tokens, or an empty set when no tokens file is configured."""
    name = config.auth.tokens_file
    if not name:
        return frozenset()
    path = Path(name)
    try:
        mode = path.stat().st_mode
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"auth.tokens_file: {path} does not exist; create it with one token per line (chmod 600)") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"auth.tokens_file: cannot read {path}: {reason}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"auth.tokens_file: {path} is not a regular file")
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(
            f"auth.tokens_file: {path} is readable or writable by other users "
            f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
        )
    tokens = parse_tokens(text)
    if not tokens:
        raise ConfigError(f"auth.tokens_file: {path} holds no tokens; put one token per line")
    for i, token in enumerate(tokens, 1):
        # Report the position, never the token itself.
        if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
            raise ConfigError(
                f"auth.tokens_file: token #{i} in {path} is too short or contains spaces; "
                f"use at least {MIN_TOKEN_CHARS} printable characters, e.g. `openssl rand -hex 24`"
            )
    return frozenset(tokens)


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
    if not header:
        return False
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return False
    given = presented.strip().encode("utf-8", "surrogateescape")
    ok = False
    # Compare against every token without short-circuiting, so timing says
    # nothing about which token (or how much of one) matched.
    for token in tokens:
        ok |= hmac.compare_digest(given, token.encode("utf-8"))
    return ok


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
