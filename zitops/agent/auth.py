"""Bearer tokens: read from a secret file, compared in constant time.

Tokens never come from the config itself, never appear in /status, errors or
logs, and the agent refuses to listen beyond loopback without them unless an
authenticating proxy is declared in front of it.
"""

from __future__ import annotations

import hmac
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from zitops.config import AgentConfig
from zitops.errors import ConfigError

MIN_TOKEN_CHARS = 16
ADMIN_PREFIX = "admin:"
"""A tokens-file line ``admin:<token>`` makes that token an admin (docs/api.md, "Tenants")."""


@dataclass(frozen=True)
class Tokens:
    """The tokens file, read: every accepted token, and which of them are admins."""

    all: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()


class LiveTokens:
    """The tokens in force, swapped whole when the tokens file is reloaded (SIGHUP, ``zitops reload``).

    One owner writes it (the server's signal loop); readers take ``current`` once
    per request, so a request never sees half of an old set and half of a new one.
    """

    def __init__(self, tokens: Tokens) -> None:
        self.current = tokens


def parse_tokens(text: str) -> list[str]:
    """Tokens from a tokens file's text: one per line (``admin:`` stripped), blanks and ``#`` comments ignored."""
    return [token for token, _ in parse_token_lines(text)]


def parse_token_lines(text: str) -> list[tuple[str, bool]]:
    """(token, is_admin) per token line of a tokens file."""
    out = []
    for line in text.splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            admin = token.startswith(ADMIN_PREFIX)
            out.append((token.removeprefix(ADMIN_PREFIX).strip() if admin else token, admin))
    return out


def load_tokens(config: AgentConfig) -> frozenset[str]:
    """The accepted bearer tokens, or an empty set when no tokens file is configured."""
    return read_tokens(config).all


def read_tokens(config: AgentConfig) -> Tokens:
    """The tokens file's tokens and admins; ConfigError for a file that is unsafe or unusable."""
    name = config.auth.tokens_file
    if not name:
        return Tokens()
    return read_tokens_file(Path(name))


def read_tokens_file(path: Path) -> Tokens:
    """One tokens file, checked as the agent checks it (doctor and deploy --start run this too)."""
    try:
        info = path.stat()
        mode = info.st_mode
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
    if mode & stat.S_IWGRP:
        raise ConfigError(
            f"auth.tokens_file: {path} is writable by its group (mode {stat.S_IMODE(mode):o}), so someone "
            f"else could add a token; run: chmod 600 {path} (or 640 to let a group read it)"
        )
    if info.st_uid not in (os.geteuid(), 0):
        # root may own it too: Kubernetes mounts Secrets as root, and root can change anything anyway.
        raise ConfigError(
            f"auth.tokens_file: {path} is owned by uid {info.st_uid}, not by the agent's user "
            f"(uid {os.geteuid()}) or root; run: chown {os.geteuid()} {path}"
        )
    lines = parse_token_lines(text)
    tokens = [token for token, _ in lines]
    if not tokens:
        raise ConfigError(f"auth.tokens_file: {path} holds no tokens; put one token per line")
    for i, token in enumerate(tokens, 1):
        # Report the position, never the token itself.
        if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
            raise ConfigError(
                f"auth.tokens_file: token #{i} in {path} is too short or contains spaces; "
                f"use at least {MIN_TOKEN_CHARS} printable characters, e.g. `openssl rand -hex 24`"
            )
    return Tokens(frozenset(tokens), frozenset(token for token, admin in lines if admin))


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
