"""The tokens file: one bearer token per line, ``admin:`` marking admins; read and checked like the agent does.

Shared by the agent's edge (:mod:`zitops.agent.http.auth`), doctor's check and
the operator commands, which read the same file; it imports only errors.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from zitops.errors import ConfigError

MIN_TOKEN_CHARS = 16
ADMIN_PREFIX = "admin:"
"""A tokens-file line ``admin:<token>`` makes that token an admin (docs/api.md, "Tenants")."""
PRIORITY_SUFFIX = re.compile(r"\s+priority=([0-9]+)\s*$")
"""A tokens-file line may end in `` priority=N`` (0..2): that token's jobs' default priority (docs/api.md)."""


@dataclass(frozen=True)
class Tokens:
    """The tokens file, read: every accepted token, which of them are admins, and their default priorities."""

    all: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()
    priorities: dict[str, int] = field(default_factory=dict)


def parse_tokens(text: str) -> list[str]:
    """Tokens from a tokens file's text: one per line (``admin:`` stripped), blanks and ``#`` comments ignored."""
    return [token for token, _ in parse_token_lines(text)]


def parse_token_lines(text: str) -> list[tuple[str, bool]]:
    """(token, is_admin) per token line of a tokens file."""
    out = []
    for line in text.splitlines():
        token = PRIORITY_SUFFIX.sub("", line.strip())
        if token and not token.startswith("#"):
            admin = token.startswith(ADMIN_PREFIX)
            out.append((token.removeprefix(ADMIN_PREFIX).strip() if admin else token, admin))
    return out


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
    return Tokens(frozenset(tokens), frozenset(token for token, admin in lines if admin),
                  token_priorities(text, path))


def token_priorities(text: str, path: Path) -> dict[str, int]:
    """token -> default priority, for the lines that end in `` priority=N``; ConfigError for N outside 0..2."""
    found = {}
    for i, line in enumerate(text.splitlines(), 1):
        m = PRIORITY_SUFFIX.search(line.strip())
        if m is None or line.strip().startswith("#"):
            continue
        if int(m.group(1)) not in (0, 1, 2):
            raise ConfigError(f"auth.tokens_file: line {i} of {path}: priority={m.group(1)}; use 0, 1 or 2")
        token = PRIORITY_SUFFIX.sub("", line.strip())
        found[token.removeprefix(ADMIN_PREFIX).strip() if token.startswith(ADMIN_PREFIX) else token] = int(m.group(1))
    return found
