"""The values of a deployment: what was asked, what was rendered, what a write did.

Constants and frozen dataclasses only, shared by planning (zitops.deployment.deploy_plan),
writing (zitops.deployment.deploy_write) and starting (zitops.deployment.deploy_start).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from zitops.config import AgentConfig
from zitops.profile import Profile
from zitops.tiers import TierChoice

TARGETS = ("supervisor", "systemd", "k8s", "compose")
ALL_TARGETS = ("supervisor", "systemd", "k8s")
"""``--target all``: this host and a cluster. Compose is asked for by name (it probes the GPUs)."""
MANIFEST = "manifest.json"
UNIT_NAME = "zitops-agent.service"
SERVICE_USER = "zitops"
# --install places files here (under --root, if given).
FHS = {
    "config_dir": "/etc/zitops",
    "libexec_dir": "/usr/local/libexec/zitops",
    "state_dir": "/var/lib/zitops",
    "log_dir": "/var/log/zitops",
    "cache_dir": "/var/cache/zitops",
    "supervisor_conf_d": "/etc/supervisor/conf.d",
    "systemd_dir": "/etc/systemd/system",
}
# The agent's runtime directories under --install, and inside a pod.
FHS_PATHS = {
    "state_dir": FHS["state_dir"],
    "log_dir": FHS["log_dir"],
    "output_dir": f"{FHS['state_dir']}/outputs",
    "cache_dir": FHS["cache_dir"],
}
# Inside the pod. The Secret and the ConfigMap get sibling directories:
# a volume mounted inside a read-only ConfigMap volume cannot get its mount point.
K8S = {
    "config_dir": "/etc/zitops/config",
    "secrets_dir": "/etc/zitops/secrets",
    "model_dir": "/models",
    "model_claim": "zitops-models",
    "prestop_s": 5,
}
# --set keys that configure the agent rather than the profile.
CONFIG_KEYS = ("auth", "limits", "server", "store", "log_format", "tracing")
# A unix socket path must fit sun_path (108 bytes with the NUL) on Linux.
MAX_SOCKET_PATH = 107
STOP_MARGIN_S = 30
WATCHDOG_S = 30
START_TIMEOUT_S = 600
START_LIMIT_INTERVAL_S = 600
START_LIMIT_BURST = 5
HOME_PREFIXES = ("/home", "/root", "/run/user")

@dataclass(frozen=True)
class DeployRequest:
    """What the user asked for: the CLI maps its switches onto this, one to one."""

    profile: str = "designer"
    targets: tuple[str, ...] = ALL_TARGETS
    out: Path = Path("deploy")
    model: str = "tiny"
    host: str = "127.0.0.1"
    port: int = 7860
    gpus: str = "auto"
    overrides: tuple[str, ...] = ()
    install: bool = False
    root: Path = Path("/")
    force: bool = False
    lora_dir: Path | None = None  # None: <out>/loras (or <state_dir>/loras with --install)
    controlnet_dir: Path | None = None  # None: ControlNet off (control requests get a 422)
    # The zitops executable the services run; None means the one installed
    # next to this interpreter. Tests and reference units pin it.
    zitops_bin: str | None = None
    # The job store: "sqlite" (each agent its own) or postgresql://USER@HOST:PORT/DB (a fleet).
    store: str = "sqlite"
    store_password_file: Path | None = None
    replicas: int = 1  # the Kubernetes Deployment's pods (one GPU each)
    image: str | None = None  # the container image k8s and compose run; None: zitops:<version>


@dataclass(frozen=True)
class RenderedFile:
    """One file of a deployment, rendered in memory."""

    path: str  # relative to --out, POSIX separators
    content: str
    mode: int = 0o644
    install_to: str | None = None  # absolute final path with --install

    @property
    def data(self) -> bytes:
        """The bytes that will be written."""
        return self.content.encode("utf-8")

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of :attr:`data`."""
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Plan:
    """A fully rendered and validated deployment, not yet written."""

    request: DeployRequest
    out: Path
    profile: Profile
    config: AgentConfig
    k8s_config: AgentConfig | None
    files: tuple[RenderedFile, ...]
    runtime_dirs: tuple[Path, ...]
    zitops_bin: str
    tier: TierChoice | None = None  # --profile auto: the profile chosen from the card's memory, and why

    def file(self, path: str) -> RenderedFile:
        """The rendered file at ``path`` (relative to --out)."""
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    @property
    def supervisord_conf(self) -> Path:
        """The standalone supervisord.conf inside --out."""
        return self.out / "supervisord.conf"

    @property
    def base_url(self) -> str:
        """Where a client on this machine reaches the agent."""
        return f"http://{url_host(probe_host(self.config.host))}:{self.config.port}"


@dataclass(frozen=True)
class Change:
    """What a write did to one path."""

    action: str  # created | changed | unchanged | overwritten | stale
    path: str


@dataclass
class Result:
    """What ``apply`` did, and what the user should run next."""

    changes: list[Change] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)



def probe_host(host: str) -> str:
    """The address to probe an agent bound to ``host`` at (a wildcard bind answers on loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def url_host(host: str) -> str:
    """``host`` as it goes into a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def under_home(*paths: str) -> bool:
    """True when any of ``paths`` lies under a home directory (a service user cannot read those)."""
    return any(p == h or p.startswith(h + "/") for p in paths for h in HOME_PREFIXES)
