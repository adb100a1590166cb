"""``zitops deploy --target compose``: one host, PostgreSQL and one agent container per GPU.

Every agent runs the zitops image (Containerfile) with the same in-container
config, mounted at /etc/zitops/config.yaml, and shares the job store: any agent
accepts, runs and serves any job (docs/fleet.md). Each agent gets one GPU by a
Compose device reservation, so inside its container that GPU is the only one
(``gpus: auto``). Nothing secret is rendered: the tokens and the store password
are Compose secrets read from files the operator creates beside compose.yaml.
"""

from __future__ import annotations

import re
from typing import Any

from zitops import __version__
from zitops.config import AgentConfig, config_from_mapping, config_to_dict
from zitops.deployment.deploy_types import FHS, FHS_PATHS, K8S, DeployRequest, RenderedFile
from zitops.engine.loader import FULL_RANDOM, TINY
from zitops.errors import RenderError
from zitops.render import render

POSTGRES_IMAGE = "docker.io/library/postgres:16-bookworm"
STORE_USER = "zitops"
STORE_DB = "zitops"
SECRETS = {"tokens": "secrets/tokens", "store_password": "secrets/store-password"}
"""Compose secret name -> file, relative to compose.yaml; each is mounted at /run/secrets/<name>."""


_IMAGE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")


def image_ref(req: DeployRequest) -> str:
    """The image the k8s and compose targets run: --image, else the version's tag."""
    if req.image is None:
        return f"zitops:{__version__}"
    if not _IMAGE_REF.fullmatch(req.image):
        raise RenderError(f"--image {req.image[:80]!r}: give an image reference such as "
                          f"registry.example/zitops:{__version__} (letters, digits and ._/:@+-, at most 255)")
    return req.image


def agent_gpus(gpus: list[int] | str) -> list[int | None]:
    """One agent per GPU: the given indices, or every GPU NVML sees; none seen: one agent on the CPU."""
    if not isinstance(gpus, str):
        return list(gpus)
    from zitops.gpu import probe_gpus

    found = [g.index for g in probe_gpus()]
    return list(found) if found else [None]


def compose_config(config: AgentConfig, model: str) -> AgentConfig:
    """The in-container config every agent mounts: FHS paths, all addresses, tokens, the shared store."""
    data = config_to_dict(config)
    store = {k: v for k, v in (data.get("store") or {}).items() if k not in ("url", "url_file", "password_file")}
    data.update({
        "model": model if model in (TINY, FULL_RANDOM) else K8S["model_dir"],
        "host": "0.0.0.0",
        "gpus": "auto",  # the device reservation leaves each container exactly its GPU
        "paths": dict(FHS_PATHS),
        "log_format": "json",
        "auth": {"tokens_file": "/run/secrets/tokens", "behind_proxy": config.auth.behind_proxy},
        "store": {**store, "url": f"postgresql://{STORE_USER}@store:5432/{STORE_DB}?sslmode=disable",
                  "password_file": "/run/secrets/store_password"},
    })
    return config_from_mapping(data, "compose config")


def compose_files(ctx: dict[str, Any], config: AgentConfig, model: str, req: DeployRequest,
                  gpus: list[int] | str) -> list[RenderedFile]:
    """compose/compose.yaml and the agents' compose/config.yaml."""
    if req.store != "sqlite":
        raise RenderError("--target compose runs its own PostgreSQL store: leave --store out "
                          "(or render --target k8s/supervisor/systemd for an external store)")
    in_container = compose_config(config, model)
    indices = agent_gpus(gpus)
    last_port = config.port + len(indices) - 1
    if last_port > 65535:
        raise RenderError(f"--port {config.port}: the agents publish ports {config.port} to "
                          f"{last_port}, past 65535; choose a lower --port")
    agents = [{"name": f"agent-{i}", "gpu": gpu, "host_port": config.port + i} for i, gpu in enumerate(indices)]
    cctx = {
        **ctx,
        "compose_config": config_to_dict(in_container),
        "compose": {
            "image": image_ref(req),
            "postgres_image": POSTGRES_IMAGE,
            "store_user": STORE_USER,
            "store_db": STORE_DB,
            "secrets": SECRETS,
            "agents": agents,
            "publish_host": ctx["config"]["host"] if config.is_loopback else "0.0.0.0",
            "config_file": f"{FHS['config_dir']}/config.yaml",
            "model_path": None if model in (TINY, FULL_RANDOM) else model,
            "model_dir": K8S["model_dir"],
            "paths": dict(FHS_PATHS),
            "shm_mib": config.profile.disk.shm_mib,
        },
    }
    return [RenderedFile("compose/compose.yaml", render("compose/compose.yaml.j2", cctx)),
            RenderedFile("compose/config.yaml", render("compose/config.yaml.j2", cctx))]
