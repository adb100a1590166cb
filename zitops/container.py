"""The image's side of zitops: its default command's config, and the record the build baked in.

The Containerfile installs zitops into the venv ``/opt/zitops`` and writes
``<venv>/share/zitops/image.json`` (version, revision, source, base, the SBOM's
path) beside the CycloneDX SBOM. Inside the image the agent's directories are
the FHS ones (:data:`zitops.deploy_types.FHS_PATHS`), each on a declared volume,
so the root filesystem may be read-only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from zitops.config import AgentConfig, config_from_mapping, config_to_dict
from zitops.deploy_types import FHS, FHS_PATHS
from zitops.engine.loader import TINY
from zitops.errors import ConfigError
from zitops.profile import load_profile, profile_to_dict

IMAGE_INFO = Path(sys.prefix) / "share" / "zitops" / "image.json"
"""Written by the Containerfile's build stage; absent outside an image."""

MOUNTED_CONFIG = Path(FHS["config_dir"]) / "config.yaml"
"""A config mounted here (a ConfigMap, a Compose bind) is what the container runs."""

MOUNTED_TOKENS = Path(FHS["config_dir"]) / "tokens"
"""Bearer tokens for the default command's agent, when mounted (one per line, mode 0600 or 0640)."""

DEMO_PROFILE = "designer"
DEMO_CONFIG = Path(FHS_PATHS["state_dir"]) / "container-config.yaml"
"""Where the default command writes the config it runs (on the state volume)."""

IMAGE_KEYS = ("version", "revision", "source", "created", "base", "sbom")


def image_info(path: Path = IMAGE_INFO) -> dict[str, str] | None:
    """The build's record of this image, or None outside an image (no such file)."""
    try:
        data: Any = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: the image's record is unreadable ({exc.__class__.__name__}); "
                          "rebuild the image") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the image's record is not a JSON object; rebuild the image")
    return {key: str(data.get(key, "unknown")) for key in IMAGE_KEYS}


def demo_config(port: int, tokens_file: Path | None) -> AgentConfig:
    """The tiny model with the designer profile on ``port``, on every address of the container.

    The container has a network namespace of its own: only what the runtime
    publishes reaches it, so without a tokens file the published port stands
    as the proxy in front (publish it on 127.0.0.1, or mount tokens).
    """
    auth: dict[str, Any] = ({"tokens_file": str(tokens_file)} if tokens_file is not None
                            else {"behind_proxy": True})
    return config_from_mapping({
        "profile": profile_to_dict(load_profile(DEMO_PROFILE)),
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
