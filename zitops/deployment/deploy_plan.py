"""``zitops deploy``, planning: resolve the profile and options, render every file in memory, validate.

Nothing here touches the disk (but reading the model directory to check it).
"""

from __future__ import annotations

import configparser
import ipaddress
import math
import os
import pwd
import re
import shutil
import sys
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

import yaml

from zitops import __version__
from zitops.config import AgentConfig, config_from_mapping, config_to_dict
from zitops.deployment.deploy_compose import compose_files, image_ref
from zitops.deployment.deploy_fleet import (
    STORE_SECRET_FILE,
    check_replicas,
    fleet_context,
    k8s_fleet_files,
    k8s_store,
    store_settings,
)
from zitops.deployment.deploy_images import image_settings, k8s_images, s3_context
from zitops.deployment.deploy_types import (
    CONFIG_KEYS,
    FHS,
    FHS_PATHS,
    K8S,
    MAX_SOCKET_PATH,
    SERVICE_USER,
    START_LIMIT_BURST,
    START_LIMIT_INTERVAL_S,
    START_TIMEOUT_S,
    STOP_MARGIN_S,
    TARGETS,
    UNIT_NAME,
    WATCHDOG_S,
    DeployRequest,
    Plan,
    RenderedFile,
    under_home,
)
from zitops.engine.loader import FULL_RANDOM, TINY, check_model
from zitops.errors import RenderError
from zitops.observe import files as observe_files
from zitops.preflight.doctor import tier_of_host
from zitops.profile import load_profile, parse_override, profile_to_dict
from zitops.render import check_value, render
from zitops.tiers import AUTO_PROFILE

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)

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
    """``tiny``, ``full-random``, or the absolute path of complete weights (checked as ``zitops model check`` does)."""
    if model in (TINY, FULL_RANDOM):
        return model
    if not model.strip():
        raise RenderError("--model: give a directory of diffusers-format weights, or 'tiny'")
    path = str(Path(check_value(model, "--model")).expanduser().absolute())
    found = check_model(path)
    if not found.ok:
        raise RenderError(
            f"--model {path}: not a complete diffusers-format model, missing {', '.join(found.missing)}; "
            "check it with `zitops model check PATH`, or use --model tiny for a demo"
        )
    return path


def controlnet_dir(given: Path) -> Path:
    """``--controlnet-dir`` as an absolute path, checked to hold a diffusers-format ControlNet."""
    path = given.expanduser().absolute()
    if not (path / "config.json").is_file():
        raise RenderError(f"--controlnet-dir {path}: no config.json there; give the directory of a "
                          "diffusers-format Z-Image ControlNet (config.json + diffusion_pytorch_model*.safetensors)")
    return path


def plan(req: DeployRequest) -> Plan:
    """Resolve the profile and options, render every file in memory, and validate them."""
    for target in req.targets:
        if target not in TARGETS:
            raise RenderError(f"--target {target!r}: use one of {', '.join(TARGETS)} or all")
    out = Path(os.path.abspath(req.out.expanduser()))
    profile_sets, config_sets = _split_overrides(req.overrides)
    gpus = parse_gpus(req.gpus)
    model = _model(req.model)
    tier = tier_of_host(model, gpus) if req.profile == AUTO_PROFILE else None
    profile = load_profile(tier.profile if tier is not None else req.profile, profile_sets)
    extra = _config_overrides(config_sets)
    store = {**store_settings(req), **extra.pop("store", {})}
    images = {**image_settings(req), **extra.pop("images", {})}
    check_replicas(req)
    host = check_host(req.host)
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

    paths.update(extra.pop("paths", {}))  # --set paths.compile_bundle_dir=/shared/bundles
    lora_dir = req.lora_dir.expanduser().absolute() if req.lora_dir is not None else (
        Path(paths["state_dir"]) / "loras" if req.install else out / "loras")
    config_data = {
        "lora_dir": str(lora_dir),
        **({"controlnet_dir": str(controlnet_dir(req.controlnet_dir))} if req.controlnet_dir is not None else {}),
        "profile": profile_to_dict(profile),
        "model": model,
        "host": host,
        "port": req.port,
        "gpus": gpus,
        "paths": paths,
        **({"store": store} if store else {}),
        **({"images": images} if images else {}),
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
        "tier_reason": tier.reason if tier is not None else None,
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
        "protect_home": "read-only" if under_home(zitops_bin, config_file, *paths.values()) else "yes",
        "read_write_paths": _outermost(paths.values()),
        "device_allow": devices,
        "watchdog_s": WATCHDOG_S,
        "start_timeout_s": START_TIMEOUT_S,
        "start_limit_interval_s": START_LIMIT_INTERVAL_S,
        "start_limit_burst": START_LIMIT_BURST,
        "limit_nofile": config.server.max_open_files,
    }

    def place(final: str) -> str | None:
        return final if req.install else None

    files = [
        # 0640 like the other files; installed under /etc it stays 0644 (root-owned, no secrets in it:
        # tokens live in their own file) so that the service user, outside root's group, can read it.
        RenderedFile("config.yaml", render("agent/config.yaml.j2", ctx), 0o644 if req.install else 0o640,
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
        k8s_config, k8s_files = _k8s(ctx, config, model, req)
        files.extend(k8s_files)
    if "compose" in req.targets:
        files.extend(compose_files(ctx, config, model, req, gpus))
    monitoring = observe_files.plain_files(profile)
    monitoring += observe_files.k8s_files(profile) if "k8s" in req.targets else []
    files.extend(RenderedFile(path, text) for path, text in monitoring)
    _validate(files, config, k8s_config)
    runtime = [] if req.install else [Path(d) for d in paths.values()]
    if "supervisor" in req.targets:
        runtime.append(out / "logs")  # supervisord's own log, even with --install
    runtime = sorted(set(runtime))
    return Plan(req, out, profile, config, k8s_config, tuple(files), tuple(runtime), zitops_bin, tier)


def _outermost(paths: Iterable[str]) -> list[str]:
    """Sorted paths, less those inside another one of them."""
    unique = sorted(set(paths))
    return [p for p in unique if not any(p.startswith(o + "/") for o in unique if o != p)]


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def service_hosts(name: str = "zitops") -> list[str]:
    """The names a client inside the cluster uses for the Service ``name``, any namespace."""
    return [name, "*.svc", "*.svc.cluster.local"]


def _k8s(ctx: dict[str, Any], config: AgentConfig, model: str,
         req: DeployRequest) -> tuple[AgentConfig, list[RenderedFile]]:
    """The in-pod config (0.0.0.0, tokens and the store from Secrets) and the manifests."""
    paths = dict(FHS_PATHS)
    k8s_model = model if model in (TINY, FULL_RANDOM) else K8S["model_dir"]
    data = config_to_dict(config)
    server = dict(data.get("server") or {})
    # Clients reach the pod through its Service; the kubelet's probes are exempt from the check.
    server["allowed_hosts"] = list(dict.fromkeys([*server.get("allowed_hosts", []), *service_hosts()]))
    data.update({
        "server": server,
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
    if config.store.shared:
        data["store"] = k8s_store(data["store"])
    data["images"] = k8s_images(data.get("images") or {})
    k8s_config = config_from_mapping(data, "kubernetes config")
    env = {"HOME": paths["state_dir"], **cache_env(paths["cache_dir"])}
    kctx = {
        **ctx,
        "k8s_config": config_to_dict(k8s_config),
        "k8s": {
            **K8S,
            "image": image_ref(req),
            "config_file": f"{K8S['config_dir']}/config.yaml",
            "paths": paths,
            "env": env,
            "model_claim": None if model in (TINY, FULL_RANDOM) else K8S["model_claim"],
            "disk": config.profile.disk.model_dump(),
        },
        **fleet_context(req),
        "s3": s3_context(data["images"]),
    }
    files = [
        RenderedFile(f"k8s/{name}.yaml", render(f"k8s/{name}.yaml.j2", kctx))
        for name in ("configmap", "service", "deployment")
    ]
    if config.store.shared:
        files += k8s_fleet_files(kctx, req)
    return k8s_config, [*files, kustomization(files)]


def kustomization(files: list[RenderedFile]) -> RenderedFile:
    """k8s/kustomization.yaml listing every manifest the k8s target rendered (but the Secret to fill)."""
    resources = [f.path.removeprefix("k8s/") for f in files
                 if f.path.startswith("k8s/") and f.path != STORE_SECRET_FILE]
    return RenderedFile("k8s/kustomization.yaml", render("k8s/kustomization.yaml.j2", {
        "resources": resources, "store_secret": STORE_SECRET_FILE.removeprefix("k8s/")
        if any(f.path == STORE_SECRET_FILE for f in files) else None}))


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

