"""``zitops deploy --store``: the store settings of the config, and the fleet's Kubernetes manifests.

The password is never rendered anywhere: on a host the config names the
password file (``--store-password-file``); in a pod the URL and the password
come from the ``zitops-store`` Secret, rendered as a template the operator
fills (or creates with kubectl). docs/fleet.md explains the parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from zitops.deployment.deploy_types import DeployRequest, RenderedFile
from zitops.errors import RenderError
from zitops.render import check_value, render

STORE_SECRET = "zitops-store"
STORE_SECRET_FILE = "k8s/store-secret.yaml"
"""A template the operator fills: kustomization.yaml does not list it (applying it empty would clear the password)."""
STORE_DIR = "/etc/zitops/store"  # the Secret's mount: files url and password

KEDA_QUERY = "SELECT count(*) FROM zitops.jobs WHERE status IN ('queued', 'running')"
"""What KEDA scales on: the fleet's jobs waiting or running (a test runs it against the real server)."""

KEDA_TARGET_PER_REPLICA = 2
"""KEDA's target of that count per replica: one job running and one waiting per GPU."""

KEDA_MAX_FACTOR = 4
"""maxReplicaCount is this times --replicas (minReplicaCount is --replicas): edit it to your GPU quota."""


def store_settings(req: DeployRequest) -> dict[str, Any]:
    """The config's ``store`` section for a host (supervisor, systemd), or {} for SQLite."""
    if req.store == "sqlite":
        if req.store_password_file is not None:
            raise RenderError("--store-password-file only applies with --store postgresql://USER@HOST:PORT/DB")
        return {}
    url = check_value(req.store, "--store")
    if not url.startswith(("postgresql://", "postgres://")):
        raise RenderError(f"--store {url[:60]!r}: use sqlite or postgresql://USER@HOST:PORT/DB")
    settings: dict[str, Any] = {"url": url}
    if req.store_password_file is not None:
        path = Path(check_value(str(req.store_password_file), "--store-password-file")).expanduser().absolute()
        if not path.is_file():
            raise RenderError(f"--store-password-file {path}: no such file (one line: the store password)")
        settings["password_file"] = str(path)
    return settings


def k8s_store(store: dict[str, Any]) -> dict[str, Any]:
    """The in-pod ``store`` section: the URL and the password from the Secret's files."""
    return {**{k: v for k, v in store.items() if k not in ("url", "password_file")},
            "url_file": f"{STORE_DIR}/url", "password_file": f"{STORE_DIR}/password"}


def keda_connection(url: str) -> dict[str, str]:
    """The postgresql trigger's connection fields from the store URL (no password: the Secret has it)."""
    parts = urlsplit(url)
    sslmode = parse_qs(parts.query).get("sslmode", ["require"])[0]
    if not parts.hostname or not parts.username or not parts.path.strip("/"):
        raise RenderError(f"--store {url[:80]!r}: name the user, the host and the database "
                          "(postgresql://USER@HOST:PORT/DB) for the KEDA trigger")
    return {"host": parts.hostname, "port": str(parts.port or 5432), "userName": parts.username,
            "dbName": parts.path.strip("/"), "sslmode": sslmode}


def k8s_fleet_files(kctx: dict[str, Any], req: DeployRequest) -> list[RenderedFile]:
    """The Secret template, the PodDisruptionBudget and KEDA's ScaledObject with its TriggerAuthentication."""
    ctx = {**kctx, "fleet": {
        "secret": STORE_SECRET, "url": req.store, "replicas": req.replicas,
        "max_replicas": max(req.replicas, req.replicas * KEDA_MAX_FACTOR),
        "min_available": max(0, req.replicas - 1),
        "query": KEDA_QUERY, "target": str(KEDA_TARGET_PER_REPLICA), "connection": keda_connection(req.store),
    }}
    return [RenderedFile(f"k8s/{name}.yaml", render(f"k8s/{name}.yaml.j2", ctx))
            for name in ("store-secret", "pdb", "keda")]


def fleet_context(req: DeployRequest) -> dict[str, Any]:
    """The deployment template's fleet values (None for SQLite)."""
    if req.store == "sqlite":
        return {"fleet": None, "replicas": req.replicas}
    return {"fleet": {"secret": STORE_SECRET, "store_dir": STORE_DIR}, "replicas": req.replicas}


def check_replicas(req: DeployRequest) -> None:
    """--replicas > 1 needs the shared store: agents on SQLite do not share jobs."""
    if req.replicas > 1 and req.store == "sqlite":
        raise RenderError(f"--replicas {req.replicas}: several pods need the shared job store; "
                          "add --store postgresql://USER@HOST:PORT/DB")
    if not 1 <= req.replicas <= 1000:
        raise RenderError(f"--replicas {req.replicas}: use 1 to 1000")

