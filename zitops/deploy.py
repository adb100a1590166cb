"""``zitops deploy``: plan, render everything in memory, validate, then write.

Nothing touches the disk until every file has rendered and passed its
in-memory check, so a refused deploy leaves ``--out`` as it was (not even
created). Files are written atomically (temp file, fsync, rename) and listed
with their SHA-256 in ``manifest.json``; a re-run compares against it to
report what changed and to refuse to overwrite a file the user has edited,
unless ``--force``.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.util
import ipaddress
import json
import math
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from zitops import __version__
from zitops.config import AgentConfig, config_from_mapping, config_to_dict
from zitops.errors import AgentUnavailable, RenderError, ZitopsError
from zitops.profile import Profile, load_profile, parse_override, profile_to_dict
from zitops.render import render

TARGETS = ("supervisor", "systemd", "k8s")
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
CONFIG_KEYS = ("auth", "limits", "log_format")
# A unix socket path must fit sun_path (108 bytes with the NUL) on Linux.
MAX_SOCKET_PATH = 107
STOP_MARGIN_S = 30
WATCHDOG_S = 30
START_TIMEOUT_S = 600
START_LIMIT_INTERVAL_S = 600
START_LIMIT_BURST = 5
HOME_PREFIXES = ("/home", "/root", "/run/user")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


@dataclass(frozen=True)
class DeployRequest:
    """What the user asked for: the CLI maps its switches onto this, one to one."""

    profile: str = "designer"
    targets: tuple[str, ...] = TARGETS
    out: Path = Path("deploy")
    model: str = "tiny"
    host: str = "127.0.0.1"
    port: int = 7860
    gpus: str = "auto"
    overrides: tuple[str, ...] = ()
    install: bool = False
    root: Path = Path("/")
    force: bool = False
    # The zitops executable the services run; None means the one installed
    # next to this interpreter. Tests and reference units pin it.
    zitops_bin: str | None = None


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
        return f"http://{_url_host(_probe_host(self.config.host))}:{self.config.port}"


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


# ---------------------------------------------------------------- planning


def resolve_zitops_bin() -> str:
    """The absolute path of the zitops executable this interpreter installed."""
    beside = Path(sys.executable).parent / "zitops"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("zitops")
    if found:
        return str(Path(found).absolute())
    raise RenderError(
        "cannot find the zitops executable to run: install the project first (pip install -e .)"
    )


def parse_gpus(text: str) -> list[int] | str:
    """``auto`` or a comma-separated list of distinct GPU indices."""
    text = text.strip()
    if text == "auto":
        return "auto"
    items = [p.strip() for p in text.split(",")]
    if not items or not all(p.isdigit() for p in items):
        raise RenderError(f"--gpus {text!r}: use 'auto' or GPU indices such as 0,1")
    gpus = [int(p) for p in items]
    if len(set(gpus)) != len(gpus):
        raise RenderError(f"--gpus {text!r}: an index is repeated")
    return gpus


def check_host(host: str) -> str:
    """An IP address or a DNS hostname; anything else is refused."""
    with suppress(ValueError):
        return str(ipaddress.ip_address(host))
    if _HOSTNAME.fullmatch(host):
        return host
    raise RenderError(f"--host {host!r}: not an IP address or a hostname")


def _probe_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def cache_env(cache_dir: str) -> dict[str, str]:
    """Environment that keeps compile and download caches under the cache dir."""
    return {
        "XDG_CACHE_HOME": cache_dir,
        "HF_HOME": f"{cache_dir}/huggingface",
        # The same directory the engine points inductor at (engine/diffusers_engine.py).
        "TORCHINDUCTOR_CACHE_DIR": f"{cache_dir}/inductor",
        "TRITON_CACHE_DIR": f"{cache_dir}/triton",
    }


def _split_overrides(overrides: Iterable[str]) -> tuple[list[str], list[str]]:
    profile_sets: list[str] = []
    config_sets: list[str] = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        (config_sets if key.split(".")[0] in CONFIG_KEYS else profile_sets).append(item)
    return profile_sets, config_sets


def _config_overrides(items: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for item in items:
        parts, value = parse_override(item)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def _model(model: str) -> str:
    if model == "tiny":
        return model
    if not model.strip():
        raise RenderError("--model: give a directory of diffusers-format weights, or 'tiny'")
    return str(Path(model).expanduser().absolute())


def _under_home(*paths: str) -> bool:
    return any(p == h or p.startswith(h + "/") for p in paths for h in HOME_PREFIXES)


def plan(req: DeployRequest) -> Plan:
    """Resolve the profile and options, render every file in memory, and validate them."""
    for target in req.targets:
        if target not in TARGETS:
            raise RenderError(f"--target {target!r}: use one of {', '.join(TARGETS)} or all")
    out = Path(os.path.abspath(req.out.expanduser()))
    profile_sets, config_sets = _split_overrides(req.overrides)
    profile = load_profile(req.profile, profile_sets)
    extra = _config_overrides(config_sets)
    host = check_host(req.host)
    gpus = parse_gpus(req.gpus)
    model = _model(req.model)
    zitops_bin = req.zitops_bin or resolve_zitops_bin()
    drain = profile.queue.drain_timeout_s
    stop_timeout_s = math.ceil(drain) + STOP_MARGIN_S

    if req.install:
        paths = dict(FHS_PATHS)
        config_file = f"{FHS['config_dir']}/config.yaml"
        start_sh = f"{FHS['libexec_dir']}/start.sh"
    else:
        # One directory holds the whole deployment.
        paths = {key: str(out / name) for key, name in (
            ("state_dir", "state"), ("log_dir", "logs"), ("output_dir", "outputs"), ("cache_dir", "cache"),
        )}
        config_file = str(out / "config.yaml")
        start_sh = str(out / "start.sh")

    config_data = {
        "profile": profile_to_dict(profile),
        "model": model,
        "host": host,
        "port": req.port,
        "gpus": gpus,
        "paths": paths,
        **extra,
    }
    config = config_from_mapping(config_data, "deploy options (--set)")
    if not config.is_loopback and not (config.auth.tokens_file or config.auth.behind_proxy):
        raise RenderError(
            f"--host {host}: the agent listens beyond this machine only with bearer tokens; "
            "add --set auth.tokens_file=PATH (a 0600 file, one token per line) "
            "or --set auth.behind_proxy=true (a proxy in front authenticates)"
        )

    env = cache_env(paths["cache_dir"])
    devices = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"]
    # char-nvidia-frontend is the driver's device class: every /dev/nvidiaN.
    devices += ["char-nvidia-frontend"] if gpus == "auto" else [f"/dev/nvidia{i}" for i in gpus]
    run_user = None
    if not req.install and os.getuid() != 0:
        run_user = pwd.getpwuid(os.getuid()).pw_name
    sup = {
        "socket": str(out / "supervisor.sock"),
        "pidfile": str(out / "supervisord.pid"),
        "logfile": str(out / "logs" / "supervisord.log"),
    }
    sup["serverurl"] = "unix://" + sup["socket"]
    if "supervisor" in req.targets and len(sup["socket"].encode()) > MAX_SOCKET_PATH:
        raise RenderError(
            f"--out {out}: the supervisor socket path would be {len(sup['socket'].encode())} bytes, "
            f"over the {MAX_SOCKET_PATH}-byte limit of unix sockets; choose a shorter --out"
        )

    ctx: dict[str, Any] = {
        "version": __version__,
        "profile_name": profile.name,
        "config": config_to_dict(config),
        "zitops_bin": zitops_bin,
        "config_file": config_file,
        "start_sh": start_sh,
        "supervisord_conf": str(out / "supervisord.conf"),
        "out_dir": str(out),
        "paths": paths,
        "env": env,
        "port": config.port,
        "drain_timeout_s": _num(drain),
        "stop_timeout_s": stop_timeout_s,
        "log_max_bytes": profile.logging.max_bytes,
        "log_backups": profile.logging.backups,
        "program_user": SERVICE_USER if req.install else None,
        "supervisor_stdout_log": f"{paths['log_dir']}/supervisor-stdout.log",
        "sup": sup,
        "install": req.install,
        "run_user": run_user,
        "protect_home": "read-only" if _under_home(zitops_bin, config_file, *paths.values()) else "yes",
        "read_write_paths": _outermost(paths.values()),
        "device_allow": devices,
        "watchdog_s": WATCHDOG_S,
        "start_timeout_s": START_TIMEOUT_S,
        "start_limit_interval_s": START_LIMIT_INTERVAL_S,
        "start_limit_burst": START_LIMIT_BURST,
    }

    def place(final: str) -> str | None:
        return final if req.install else None

    files = [
        RenderedFile("config.yaml", render("agent/config.yaml.j2", ctx), 0o644,
                     place(config_file)),
        RenderedFile("start.sh", render("agent/start.sh.j2", ctx), 0o755, place(start_sh)),
    ]
    if "supervisor" in req.targets:
        files.append(RenderedFile("supervisor/zitops.conf", render("supervisor/zitops.conf.j2", ctx),
                                  0o644, place(f"{FHS['supervisor_conf_d']}/zitops.conf")))
        files.append(RenderedFile("supervisord.conf", render("supervisor/supervisord.conf.j2", ctx)))
    if "systemd" in req.targets:
        files.append(RenderedFile(f"systemd/{UNIT_NAME}", render(f"systemd/{UNIT_NAME}.j2", ctx),
                                  0o644, place(f"{FHS['systemd_dir']}/{UNIT_NAME}")))
    k8s_config = None
    if "k8s" in req.targets:
        k8s_config, k8s_files = _k8s(ctx, config, model)
        files.extend(k8s_files)
    _validate(files, config, k8s_config)
    runtime = [] if req.install else [Path(d) for d in paths.values()]
    if "supervisor" in req.targets:
        runtime.append(out / "logs")  # supervisord's own log, even with --install
    runtime = sorted(set(runtime))
    return Plan(req, out, profile, config, k8s_config, tuple(files), tuple(runtime), zitops_bin)


def _outermost(paths: Iterable[str]) -> list[str]:
    """Sorted paths, less those inside another one of them."""
    unique = sorted(set(paths))
    return [p for p in unique if not any(p.startswith(o + "/") for o in unique if o != p)]


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _k8s(ctx: dict[str, Any], config: AgentConfig, model: str) -> tuple[AgentConfig, list[RenderedFile]]:
    """The in-pod config (0.0.0.0, tokens from the Secret) and the three manifests."""
    paths = dict(FHS_PATHS)
    k8s_model = "tiny" if model == "tiny" else K8S["model_dir"]
    data = config_to_dict(config)
    data.update({
        "model": k8s_model,
        "host": "0.0.0.0",
        "gpus": "auto",  # the device plugin gives the pod exactly its one GPU
        "paths": paths,
        "log_format": "json",
        # Listening on the pod network needs tokens; the Secret holds them.
        "auth": {
            "tokens_file": f"{K8S['secrets_dir']}/tokens",
            "behind_proxy": config.auth.behind_proxy,
        },
    })
    k8s_config = config_from_mapping(data, "kubernetes config")
    env = {"HOME": paths["state_dir"], **cache_env(paths["cache_dir"])}
    kctx = {
        **ctx,
        "k8s_config": config_to_dict(k8s_config),
        "k8s": {
            **K8S,
            "image": f"zitops:{__version__}",
            "config_file": f"{K8S['config_dir']}/config.yaml",
            "paths": paths,
            "env": env,
            "model_claim": None if model == "tiny" else K8S["model_claim"],
        },
    }
    files = [
        RenderedFile(f"k8s/{name}.yaml", render(f"k8s/{name}.yaml.j2", kctx))
        for name in ("configmap", "service", "deployment")
    ]
    return k8s_config, files


def _validate(files: list[RenderedFile], config: AgentConfig, k8s_config: AgentConfig | None) -> None:
    """Cheap in-memory checks that every file reads back as meant (the test
    suite runs the real tools: supervisor, systemd-analyze, kubernetes-validate, bash)."""
    for f in files:
        if f.path.endswith(".yaml"):
            try:
                docs = list(yaml.safe_load_all(f.content))
            except yaml.YAMLError as exc:
                raise RenderError(f"{f.path}: rendered YAML does not parse ({exc.__class__.__name__})") from None
            if f.path == "config.yaml" and config_from_mapping(docs[0], f.path) != config:
                raise RenderError(f"{f.path}: does not read back as the planned config")
            if f.path == "k8s/configmap.yaml" and k8s_config is not None:
                embedded = yaml.safe_load(docs[0]["data"]["config.yaml"])
                if config_from_mapping(embedded, f.path) != k8s_config:
                    raise RenderError(f"{f.path}: config.yaml does not read back as planned")
        elif f.path.endswith(".conf"):
            parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
            try:
                parser.read_string(f.content, f.path)
            except configparser.Error as exc:
                raise RenderError(f"{f.path}: rendered INI does not parse: {exc.message}") from None


# ---------------------------------------------------------------- writing


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RenderError(f"{path}: cannot read: {exc.strerror}") from None


def _load_manifest(out: Path) -> dict[str, Any]:
    raw = _read(out / MANIFEST)
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _staged(root: Path, final: str) -> Path:
    return root / PurePosixPath(final).relative_to("/")


def _destinations(p: Plan) -> list[tuple[str, Path, RenderedFile, str]]:
    """(manifest section, path on disk, file, manifest key) for every write."""
    dests = [("files", p.out / f.path, f, f.path) for f in p.files]
    if p.request.install:
        root = Path(os.path.abspath(p.request.root))
        for f in p.files:
            if f.install_to:
                target = _staged(root, f.install_to)
                dests.append(("installed", target, f, str(target)))
    return dests


def _writable(path: Path) -> bool:
    """Whether an atomic replace of ``path`` can work: its nearest existing
    directory must be writable (the rename needs the directory, not the file)."""
    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def apply(p: Plan) -> Result:
    """Write the plan: refuse user-edited files first, then write atomically, manifest last."""
    old = _load_manifest(p.out)
    result = Result()
    conflicts: list[str] = []
    writes: list[tuple[Path, RenderedFile, str, str]] = []
    manifest: dict[str, Any] = {
        "generator": f"zitops {__version__}",
        "profile": p.profile.name,
        "targets": list(p.request.targets),
        "files": {},
    }
    if p.request.install:
        manifest["installed"] = {}
    for section, path, f, key in _destinations(p):
        manifest[section][key] = {"sha256": f.sha256, "mode": f"{f.mode:04o}"}
        current = _read(path)
        shown = key if section == "installed" else f.path
        if current is None:
            writes.append((path, f, "created", shown))
        elif current == f.data:
            result.changes.append(Change("unchanged", shown))
        else:
            recorded = old.get(section, {}).get(key, {}).get("sha256")
            if recorded == _sha(current):
                writes.append((path, f, "changed", shown))
            elif p.request.force:
                writes.append((path, f, "overwritten", shown))
            else:
                conflicts.append(shown)
    if conflicts:
        raise RenderError(
            f"refusing to overwrite {len(conflicts)} file(s) changed since the last deploy: "
            f"{', '.join(conflicts)}; keep your edits elsewhere, or re-run with --force to overwrite"
        )
    for path, *_ in writes:
        if not _writable(path):
            hint = " (run as root, or stage with --root DIR)" if p.request.install else ""
            raise RenderError(f"cannot write {path}: permission denied{hint}")
    try:
        p.out.mkdir(parents=True, exist_ok=True)
        for d in p.runtime_dirs:
            d.mkdir(parents=True, exist_ok=True)
        for path, f, action, shown in writes:
            _write_atomic(path, f.data, f.mode)
            result.changes.append(Change(action, shown))
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        if _read(p.out / MANIFEST) != text.encode():
            _write_atomic(p.out / MANIFEST, text.encode(), 0o644)
    except OSError as exc:
        raise RenderError(f"cannot write {exc.filename or p.out}: {exc.strerror}") from None
    for key in sorted(set(old.get("files", {})) - set(manifest["files"])):
        if (p.out / key).exists():
            result.changes.append(Change("stale", key))
    result.changes.sort(key=lambda c: c.path)
    result.next_steps = next_steps(p)
    return result


def next_steps(p: Plan) -> list[str]:
    """The exact commands to run after this deploy."""
    q = shlex.quote
    targets = p.request.targets
    steps: list[str] = []
    if not p.request.install:
        if "supervisor" in targets:
            conf = q(str(p.supervisord_conf))
            steps.append(f"start:  supervisord -c {conf}   (or re-run deploy with --start)")
            steps.append(f"stop:   supervisorctl -c {conf} shutdown")
        if "systemd" in targets:
            steps.append("systemd: re-run as root with --install to place the unit and config")
        if "k8s" in targets:
            steps.append("kubernetes: kubectl create secret generic zitops-tokens --from-file=tokens=TOKENS_FILE "
                         f"&& kubectl apply -f {q(str(p.out / 'k8s'))}")
        return steps
    root = Path(os.path.abspath(p.request.root))
    if root != Path("/"):
        steps.append(f"staged under {q(str(root))}: copy its tree onto / of the target host, then:")
    if "systemd" in targets or "supervisor" in targets:
        steps.append(
            f"once: id -u {SERVICE_USER} >/dev/null 2>&1 || useradd --system --home-dir {FHS['state_dir']} "
            f"--shell /usr/sbin/nologin {SERVICE_USER}"
        )
        if _under_home(p.zitops_bin):
            steps.append(
                f"warning: {p.zitops_bin} is under a home directory the {SERVICE_USER} user cannot "
                "read; install zitops system-wide (e.g. a venv in /opt/zitops) and re-run deploy from it"
            )
    if "systemd" in targets:
        steps.append(f"systemd: systemctl daemon-reload && systemctl enable --now {UNIT_NAME}")
    if "supervisor" in targets:
        dirs = " ".join(q(d) for d in (FHS["state_dir"], FHS["log_dir"], FHS["cache_dir"]))
        steps.append(f"supervisor (once): install -d -o {SERVICE_USER} -g {SERVICE_USER} -m 0750 {dirs}")
        steps.append("supervisor: supervisorctl reread && supervisorctl update")
    if "k8s" in targets:
        steps.append("kubernetes: kubectl create secret generic zitops-tokens --from-file=tokens=TOKENS_FILE")
        steps.append(f"kubernetes: kubectl apply -f {q(str(p.out / 'k8s'))}")
    return steps


# ---------------------------------------------------------------- starting


def agent_available() -> bool:
    """True when this build has the agent command (it lands in its own issue)."""
    return importlib.util.find_spec("zitops.commands.agent") is not None


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise ZitopsError(f"cannot find {name}: install the project's dependencies (pip install -e .)")
    return found


def _ctl(p: Plan, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    cmd = [_tool("supervisorctl"), "-c", str(p.supervisord_conf), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URL we built
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def start(p: Plan, timeout_s: float = 120.0, echo: Callable[[str], None] = print) -> str:
    """Launch the standalone supervisord from --out and wait until the agent is ready."""
    conf = str(p.supervisord_conf)
    if not p.supervisord_conf.exists():
        raise ZitopsError(f"{conf} is missing: --start needs the supervisor target")
    if _ctl(p, "pid").returncode == 0:
        echo("supervisord is already running for this deployment: restarting the agent")
        _ctl(p, "reread")
        _ctl(p, "update")
        _ctl(p, "restart", "zitops", timeout=p.config.profile.queue.drain_timeout_s + STOP_MARGIN_S + 10)
    else:
        run = subprocess.run([_tool("supervisord"), "-c", conf], capture_output=True, text=True,
                             timeout=30, check=False)
        if run.returncode != 0:
            last = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ZitopsError(f"supervisord -c {conf} failed: {last[0]}")
    deadline = time.monotonic() + timeout_s
    for path in ("/livez", "/readyz"):
        url = p.base_url + path
        echo(f"waiting for {url} ...")
        while _get(url) != 200:
            state = _ctl(p, "status", "zitops").stdout.split()
            if len(state) > 1 and state[1] in ("FATAL", "EXITED", "BACKOFF"):
                raise AgentUnavailable(
                    f"the agent is {state[1]}; see {p.config.paths.log_dir}/supervisor-stdout.log, "
                    f"and stop supervisord with: supervisorctl -c {shlex.quote(conf)} shutdown"
                )
            if time.monotonic() > deadline:
                raise AgentUnavailable(
                    f"{url} did not answer 200 within {timeout_s:.0f} s; see "
                    f"{p.config.paths.log_dir}; stop with: supervisorctl -c {shlex.quote(conf)} shutdown"
                )
            time.sleep(0.5)
    return p.base_url
