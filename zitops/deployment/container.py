"""The image's default command (``zitops container-run``): which config the container runs.

Inside the image (Containerfile) the agent's directories are the FHS ones
(:data:`zitops.deployment.deploy_types.FHS_PATHS`), each on a declared volume,
so the root filesystem may be read-only. The build's own record of the image
is read by :mod:`zitops.preflight.image`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from zitops.config import AgentConfig, config_from_mapping, config_to_dict
from zitops.deployment.deploy_types import FHS, FHS_PATHS
from zitops.engine.loader import TINY
from zitops.profile import load_profile, profile_to_dict

MOUNTED_CONFIG = Path(FHS["config_dir"]) / "config.yaml"
"""A config mounted here (a ConfigMap, a Compose bind) is what the container runs."""

MOUNTED_TOKENS = Path(FHS["config_dir"]) / "tokens"
"""Bearer tokens for the default command's agent, when mounted (one per line, mode 0600 or 0640)."""

DEMO_PROFILE = "designer"
DEMO_JOB_TIMEOUT_S = 1800
"""The demo's job timeout: its tiny model runs on the CPU, where one 1024x1024 image passed the
profile's 300 s on a 2-core host under load (the seed's curl, tests/e2e/test_image.py)."""
DEMO_CONFIG = Path(FHS_PATHS["state_dir"]) / "container-config.yaml"
"""Where the default command writes the config it runs (on the state volume)."""


def demo_config(port: int, tokens_file: Path | None) -> AgentConfig:
    """The tiny model with the designer profile on ``port``, on every address of the container.

    The container has a network namespace of its own: only what the runtime
    publishes reaches it, so without a tokens file the published port stands
    as the proxy in front (publish it on 127.0.0.1, or mount tokens).
    """
    auth: dict[str, Any] = ({"tokens_file": str(tokens_file)} if tokens_file is not None
                            else {"behind_proxy": True})
    return config_from_mapping({
        "profile": profile_to_dict(load_profile(DEMO_PROFILE, [f"queue.job_timeout_s={DEMO_JOB_TIMEOUT_S}"])),
        "model": TINY,
        "host": "0.0.0.0",
        "port": port,
        "gpus": "auto",
        "paths": dict(FHS_PATHS),
        "auth": auth,
        "log_format": "json",
    }, "the container's default config")


def write_config(config: AgentConfig, path: Path = DEMO_CONFIG) -> Path:
    """Write ``config`` as YAML where the agent re-reads it on reload (the state volume)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), "utf-8")
    tmp.replace(path)
    return path
