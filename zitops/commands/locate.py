"""Where the operator commands find their deployment, and how they reach its agent.

``status``, ``health``, ``failures``, ``doctor``, ``drill``, ``logs``,
``reload`` and ``warm`` look for the deployment's ``config.yaml`` in one
order (the first that names or holds a file wins) and say which they used:

1. ``--config FILE``;
2. ``$ZITOPS_CONFIG``;
3. ``./config.yaml``;
4. ``./deploy/config.yaml`` (README command 1's ``--out ./deploy``);
5. the installed system path, ``/etc/zitops/config.yaml`` (``deploy --install``).

``--url`` still wins for the HTTP commands. The bearer token comes from
``--token-file``, else ``$ZITOPS_TOKEN``, else the deployment's own tokens
file when this user can read it (an admin line first).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import click

from zitops.config import AgentConfig, load_config
from zitops.errors import ConfigError
from zitops.preflight.reach import agent_url, deployment_token

ENV_CONFIG = "ZITOPS_CONFIG"
SYSTEM_CONFIG = Path("/etc/zitops/config.yaml")
DEFAULT_URL = "http://127.0.0.1:7860"


@dataclass(frozen=True)
class Deployment:
    """A found config.yaml: its path, which rule found it, and the config read."""

    path: Path
    source: str
    config: AgentConfig

    def describe(self) -> str:
        """One line for stderr: which file, found how."""
        return f"deployment: {self.path} ({self.source})"


def candidates(explicit: str | None, env: Mapping[str, str], cwd: Path,
               system: Path = SYSTEM_CONFIG) -> list[tuple[Path, str, bool]]:
    """(path, rule, must exist) in search order. Named files must exist; the others are looked for."""
    out: list[tuple[Path, str, bool]] = []
    if explicit:
        out.append((Path(explicit), "--config", True))
    if env.get(ENV_CONFIG):
        out.append((Path(env[ENV_CONFIG]), f"${ENV_CONFIG}", True))
    out += [(cwd / "config.yaml", "./config.yaml", False), (cwd / "deploy" / "config.yaml", "./deploy/config.yaml", False),
            (system, "the installed system path", False)]
    return out


def find_deployment(explicit: str | None = None, env: Mapping[str, str] | None = None,
                    cwd: Path | None = None, system: Path = SYSTEM_CONFIG) -> Deployment | None:
    """The first deployment in search order, or None when no rule finds one.

    A file named by ``--config`` or ``$ZITOPS_CONFIG`` that is missing is an
    error, never a silent fall-through to another deployment.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    for path, rule, named in candidates(explicit, env, cwd, system):
        if path.is_file() or named:
            if not path.is_file():
                raise ConfigError(f"{rule}: {path} is not a file; pass the config.yaml that zitops deploy rendered")
            return Deployment(path, rule, load_config(path))
    return None


def announce(found: Deployment | None, via_url: str | None = None, fallback: str = f"trying {DEFAULT_URL}") -> None:
    """Say on stderr which deployment a command used (with --url, nothing: it was named), so stdout stays clean."""
    if via_url is not None:
        return
    if found is not None:
        click.echo(found.describe(), err=True)
    else:
        click.echo(f"no deployment found (--config, ${ENV_CONFIG}, ./config.yaml, ./deploy/config.yaml, "
                   f"{SYSTEM_CONFIG}); {fallback}", err=True)


@dataclass(frozen=True)
class Target:
    """Where an HTTP command goes: the URL and the token, and the deployment if one was used."""

    url: str
    token: str | None
    deployment: Deployment | None


def resolve_target(url: str | None, config_path: str | None, token_file: str | None) -> Target:
    """The agent an HTTP command talks to: ``--url`` wins, else the found deployment, else 7860."""
    from zitops.agent.http.auth import read_client_token

    token = read_client_token(token_file)
    # With --url and no --config, no deployment is looked for: its token must not go to another host.
    found = find_deployment(config_path) if url is None or config_path else None
    announce(found, url)
    if token is None and found is not None:
        token = deployment_token(found.config)
    target_url = url or (agent_url(found.config) if found is not None else DEFAULT_URL)
    return Target(target_url.rstrip("/"), token, found)
