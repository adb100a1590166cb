"""The deployment search order the operator commands share, and the URL and token they derive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.runtime_support import runtime_config
from zitops.commands.locate import agent_url, deployment_token, find_deployment
from zitops.config import config_to_dict
from zitops.errors import ConfigError


def write(path: Path, port: int, **over: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(runtime_config(path.parent, kind="faulty", port=port, **over))))
    return path


def test_the_search_order_is_flag_env_cwd_deploy_then_system(tmp_path: Path) -> None:
    flag, env, cwd, sub, system = (write(tmp_path / d / "config.yaml", port)
                                   for d, port in (("flag", 1001), ("env", 1002), ("cwd", 1003), ("cwd/deploy", 1004),
                                                   ("etc", 1005)))
    cwd_dir = cwd.parent

    def port(explicit: str | None = None, environ: dict[str, str] | None = None) -> tuple[int, str]:
        found = find_deployment(explicit, environ or {}, cwd_dir, system)
        assert found is not None
        return found.config.port, found.source

    assert port(str(flag), {"ZITOPS_CONFIG": str(env)}) == (1001, "--config")
    assert port(None, {"ZITOPS_CONFIG": str(env)}) == (1002, "$ZITOPS_CONFIG")
    assert port() == (1003, "./config.yaml")
    cwd.unlink()
    assert port() == (1004, "./deploy/config.yaml")
    sub.unlink()
    assert port() == (1005, "the installed system path")
    system.unlink()
    assert find_deployment(None, {}, cwd_dir, system) is None
    with pytest.raises(ConfigError, match=r"\$ZITOPS_CONFIG: .*gone.yaml is not a file"):
        find_deployment(None, {"ZITOPS_CONFIG": str(tmp_path / "gone.yaml")}, cwd_dir, system)


def test_a_wildcard_bind_is_reached_on_loopback(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("tenant-token-0123456789abcdef\nadmin:admin-token-0123456789abcdef\n")
    tokens.chmod(0o600)
    config = runtime_config(tmp_path, kind="faulty", host="0.0.0.0", port=8123, auth={"tokens_file": str(tokens)})
    assert agent_url(config) == "http://127.0.0.1:8123"
    assert agent_url(runtime_config(tmp_path, kind="faulty", host="::", port=1)) == "http://[::1]:1"
    # The operator gets the admin token, whatever its line.
    assert deployment_token(config) == "admin-token-0123456789abcdef"
    tokens.unlink()  # unreadable or gone: no token, and no error (the agent may not need one)
    assert deployment_token(config) is None
