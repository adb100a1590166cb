"""The host checks of ``zitops doctor``: GPU stack, directories, disk, port, service manager, caches, fast decode.

Each function takes the resolved setup and returns :class:`zitops.preflight.doctor.Check`
values. torch and pynvml are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import os
import shutil
import socket
import stat
import sys
from pathlib import Path
from typing import Any

from zitops.preflight.doctor_model import MIN_FREE_GIB, Check, GpuSeen, Probe, Setup

GIB = 1024.0**3
LATENT_CHANNELS = 16
"""Z-Image-Turbo's VAE (FLUX's): the latent channels a fast-decode autoencoder must take."""


def check_torch(needs_gpu: bool) -> Check:
    """The torch build: version, the CUDA it was built for, and whether CUDA works here."""
    try:
        import torch
    except Exception as exc:  # a broken install must be reported, not crash the doctor
        return Check("torch", False, f"cannot import torch: {type(exc).__name__}: {exc}",
                     fix="pip install the zitops package into this interpreter (pip install zitops)")
    built = torch.version.cuda
    if not built:
        detail = f"torch {torch.__version__}, a CPU build (no CUDA)"
        if needs_gpu:
            return Check("torch", False, detail, fix="install torch's CUDA build first, e.g. "
                         "pip install torch --index-url https://download.pytorch.org/whl/cu128")
        return Check("torch", True, detail + "; fine for the tiny model", warning=True)
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as exc:  # a driver mismatch raises here
        count, why = 0, f"{type(exc).__name__}: {exc}"
    else:
        why = "torch.cuda.is_available() is False"
    detail = f"torch {torch.__version__}, built for CUDA {built}, sees {count} GPU(s)"
    if count:
        return Check("torch", True, detail)
    if needs_gpu:
        return Check("torch", False, f"{detail}: {why}",
                     fix="install an NVIDIA driver new enough for CUDA " + built + " and check nvidia-smi")
    return Check("torch", True, f"{detail}: {why}; fine for the tiny model", warning=True)


def check_nvml(setup: Setup, needs_gpu: bool, probe: Probe) -> Check:
    """NVML answers (the agent finds GPUs and watches VRAM through it), with the driver version."""
    from zitops.gpu import describe_gpus

    found = describe_gpus()
    probe.gpus = [GpuSeen(g["index"], g["name"], g["total_mib"]) for g in found["gpus"]]
    probe.nvml_ok = bool(found["available"])
    if not probe.nvml_ok:
        detail = f"no GPU through NVML: {found['reason']}"
        if needs_gpu:
            return Check("nvml", False, detail, fix="install the NVIDIA driver (it ships libnvidia-ml); in a "
                         "container run with the NVIDIA container toolkit (--gpus all)")
        return Check("nvml", True, detail + "; the agent runs one CPU worker", warning=True)
    driver = _driver_version()
    return Check("nvml", True, f"driver {driver}, {len(probe.gpus)} GPU(s)")


def _driver_version() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            value: Any = pynvml.nvmlSystemGetDriverVersion()
            return value.decode() if isinstance(value, bytes) else str(value)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # the version is a courtesy; NVML itself already answered
        return "unknown"


def check_gpus(setup: Setup, needs_gpu: bool, probe: Probe, need: float) -> list[Check]:
    """The GPUs the deployment uses, and each one's memory against the profile's measured peak."""
    wanted = [g.index for g in probe.gpus] if isinstance(setup.gpus, str) else list(setup.gpus)
    by_index = {g.index: g for g in probe.gpus}
    if not probe.gpus:
        detail = "no GPU seen: the agent would run one CPU worker"
        if needs_gpu:
            return [Check("gpus", False, detail, fix="run on a host with an NVIDIA GPU, or try the tiny "
                          "model on this one: --model tiny")]
        return [Check("gpus", True, detail + " (enough for the tiny model)", warning=True)]
    missing = [i for i in wanted if i not in by_index]
    names = ", ".join(f"{g.index}: {g.name}" for g in probe.gpus)
    checks = [Check("gpus", not missing, f"seen {names}" + (f"; missing {missing}" if missing else ""),
                    fix=None if not missing else "fix --gpus / gpus: in config.yaml to the indices above")]
    for index in wanted:
        g = by_index.get(index)
        if g is None:
            continue
        have = g.total_mib / 1024.0
        detail = (f"{have:.1f} GiB total; profile {setup.profile.name} peaks at {need:.1f} GiB "
                  "(measured, README)")
        fits = have >= need
        checks.append(Check(f"gpu {index} memory", fits or not needs_gpu, detail,
                            fix=None if fits else "use --profile auto (the tier for this card: lowvram "
                            "13.0 GiB in fp8, lowvram-12, lowvram-8)", warning=not fits))
    return checks


def check_tier(setup: Setup, needs_gpu: bool, probe: Probe) -> Check:
    """The tier ``--profile auto`` gives the cards the deployment uses (:mod:`zitops.tiers`)."""
    from zitops.tiers import Card, TierError, choose_tier

    wanted = [g for g in probe.gpus if isinstance(setup.gpus, str) or g.index in setup.gpus]
    try:
        tier = choose_tier([Card(g.index, g.name, g.total_mib) for g in wanted], tiny=not needs_gpu)
    except TierError as exc:
        # No GPU for real weights already fails the gpus check: here it is the tier's account of it.
        small = bool(wanted)
        return Check("tier", not small, str(exc), warning=not small,
                     fix="use a card with 8 GB or more" if small else None)
    same = tier.profile == setup.profile.name
    detail = f"--profile auto picks {tier.profile}: {tier.reason}"
    if not same:
        detail += f" (this check uses {setup.profile.name})"
    return Check("tier", True, detail)


def _existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_dirs(setup: Setup) -> list[Check]:
    """Each runtime directory is writable by this user and not writable by everyone."""
    user = getpass.getuser()
    out = []
    for key, label in (("state_dir", "state dir"), ("log_dir", "log dir"), ("output_dir", "output dir"),
                       ("cache_dir", "cache dir")):
        path = setup.paths[key]
        base = _existing(path)
        if base.exists() and not base.is_dir():
            out.append(Check(label, False, f"{base} is a file, not a directory", fix=f"remove {base} or "
                             "choose another directory"))
            continue
        mode = stat.S_IMODE(base.stat().st_mode)
        writable = os.access(base, os.W_OK | os.X_OK)
        where = str(path) if base == path else f"{path} (created under {base})"
        if not writable:
            out.append(Check(label, False, f"{where}: not writable by {user} (mode {mode:04o})",
                             fix=f"chown {user} {base} (or run as the service user)"))
        elif base == path and mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            out.append(Check(label, False, f"{where}: writable by every user (mode {mode:04o})",
                             fix=f"chmod o-w {path}"))
        else:
            note = f" (mode {mode:04o})" if base == path else " (the agent creates it with umask 027)"
            out.append(Check(label, True, f"{where}: writable by {user}{note}"))
    return out


def check_disk(setup: Setup) -> list[Check]:
    """Free space where outputs and caches go."""
    out = []
    for key, name in (("output_dir", "outputs"), ("cache_dir", "cache")):
        base = _existing(setup.paths[key])
        free = shutil.disk_usage(base).free / GIB
        want = MIN_FREE_GIB[name]
        out.append(Check(f"disk for {name}", free >= want,
                         f"{free:.1f} GiB free at {base} (want {want:g} GiB)",
                         fix=None if free >= want else f"free space on the filesystem of {base}, or point "
                         f"paths.{key} elsewhere"))
    return out


def check_shm(setup: Setup, directory: Path = Path("/dev/shm")) -> Check:
    """Room in ``directory`` for the workers' pixel files (zitops.worker.pixel_shm); short only warns.

    Each worker writes a job's pixels there for the agent, and keeps the next
    job's files ready; where a file does not fit (tmpfs's headroom rule), the
    pixels go through the worker's pipe instead: slower, never lost.
    """
    from zitops.worker.pixel_shm import HEADROOM, PREPARE_MAX_BYTES

    gen = setup.profile.generation
    image = gen.width * gen.height * 3
    job = image * gen.batch
    workers = len(setup.gpus) if isinstance(setup.gpus, list) and setup.gpus else 1
    want = workers * (job + min(job, PREPARE_MAX_BYTES)) + HEADROOM * image
    fix = ("give the container a larger /dev/shm (docker run --shm-size; the rendered Compose file and k8s "
           "manifests size it from the profile's disk.shm_mib)")
    label = f"pixel files ({directory})"
    if not directory.is_dir():
        return Check(label, True, f"{directory} is missing: the workers send pixels through their pipes "
                     "(slower)", fix=fix, warning=True)
    free = shutil.disk_usage(directory).free
    detail = (f"{free / 2**20:.0f} MiB free at {directory}; {workers} worker(s) at the profile's "
              f"{gen.width}x{gen.height} x{gen.batch} want about {want / 2**20:.0f} MiB")
    if free < want:
        return Check(label, True, detail + ": larger jobs' pixels go through the pipes (slower)", fix=fix,
                     warning=True)
    return Check(label, True, detail)


def check_port(host: str, port: int) -> Check:
    """Nothing else listens on ``host:port`` (uvicorn binds with SO_REUSEADDR too)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                who = _who_listens(host, port)
                return Check("port", False, f"port {port} on {host} is taken{who}",
                             fix=f"stop what listens there (ss -ltnp 'sport = :{port}') or pass --port N")
            if exc.errno == errno.EACCES:
                return Check("port", False, f"port {port} on {host}: binding needs privileges",
                             fix="use a port above 1023")
            return Check("port", False, f"cannot bind {host}:{port}: {exc.strerror}",
                         fix="set --host to an address of this machine")
    return Check("port", True, f"{host}:{port} is free")


def _who_listens(host: str, port: int) -> str:
    import httpx

    with contextlib.suppress(httpx.HTTPError, ValueError):
        h = f"[{host}]" if ":" in host else host
        r = httpx.get(f"http://{h}:{port}/livez", timeout=1.0)
        if "live" in r.json():
            return " (by a running zitops agent)"
    return ""


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def check_service_manager(setup: Setup) -> Check:
    """The process manager the target needs is here: supervisord, or a running systemd."""
    if setup.target == "supervisor":
        found = _tool("supervisord")
        if found is None:
            return Check("supervisor", False, "supervisord not found beside this Python or on PATH",
                         fix="pip install supervisor (a zitops dependency), or use --target systemd")
        return Check("supervisor", True, f"supervisord at {found}")
    if setup.target == "systemd":
        ctl = _tool("systemctl")
        if ctl is None or not Path("/run/systemd/system").is_dir():
            why = "systemctl not found" if ctl is None else "systemd is not PID 1 here (no /run/systemd/system)"
            return Check("systemd", False, why, fix="use --target supervisor on hosts without systemd")
        return Check("systemd", True, f"systemd is running ({ctl})")
    return Check("k8s", True, "manifests only: nothing to check on this host (the cluster's GPU nodes "
                 "need the NVIDIA device plugin)", warning=True)


def check_compile_cache(setup: Setup) -> Check:
    """Whether the first job after a start compiles from scratch or from the cache."""
    if not setup.profile.engine.compile:
        return Check("compile cache", True, f"profile {setup.profile.name} does not compile: the first job "
                     "pays only its warm-up")
    inductor = setup.paths["cache_dir"] / "inductor"
    warm = inductor.is_dir() and any(inductor.iterdir())
    if warm:
        return Check("compile cache", True, f"{inductor} is warm: the first job reuses compiled code "
                     "(H200: first image about 6 s after Ready, docs/runtime.md)")
    return Check("compile cache", True, f"{inductor} is empty: the first job after the first start compiles "
                 "before it runs (tens of seconds more; later starts reuse the cache)", warning=True)


def check_fast_decode(setup: Setup) -> Check:
    """``vae_decode: fast`` has a TAEF1-style autoencoder to decode with (torch-free: its config.json)."""
    engine = setup.profile.engine
    if engine.vae_decode != "fast":
        return Check("fast decode", True, f"profile {setup.profile.name} decodes with the full VAE "
                     f"({engine.vae_decode})")
    fix = ("put TAEF1 (madebyollin/taef1, diffusers format) in a local directory and point "
           "engine.tiny_vae_path at it (zitops deploy --set engine.tiny_vae_path=DIR)")
    if not engine.tiny_vae_path:
        return Check("fast decode", True, "vae_decode is fast but engine.tiny_vae_path is not set: the worker "
                     "falls back to tiled decode (ecommerce on an H200: 142.6 images/minute against 191.7 "
                     "with a TAEF1-shaped decoder)", fix=fix, warning=True)
    config = Path(engine.tiny_vae_path).expanduser() / "config.json"
    try:
        data = json.loads(config.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        return Check("fast decode", False, f"engine.tiny_vae_path: {config} cannot be read "
                     f"({exc.__class__.__name__}); the worker would not start", fix=fix)
    kind, channels = data.get("_class_name"), data.get("latent_channels")
    if kind != "AutoencoderTiny" or channels != LATENT_CHANNELS:
        return Check("fast decode", False, f"engine.tiny_vae_path: {config} is a {kind} with {channels} latent "
                     f"channels; Z-Image's VAE needs an AutoencoderTiny with {LATENT_CHANNELS} (TAEF1)", fix=fix)
    return Check("fast decode", True, f"TAEF1-style AutoencoderTiny at {config.parent}")


def check_tokens(setup: Setup) -> Check | None:
    """The tokens file passes the agent's own reading (mode, owner, token lengths); None without one."""
    if not setup.tokens_file:
        return None
    from zitops.errors import ConfigError
    from zitops.tokens_file import read_tokens_file

    try:
        tokens = read_tokens_file(Path(setup.tokens_file))
    except ConfigError as exc:
        return Check("tokens file", False, str(exc).removeprefix("auth.tokens_file: "),
                     fix="fix the file as the detail says: the agent refuses to start with it")
    return Check("tokens file", True, f"{setup.tokens_file}: {len(tokens.all)} token(s), "
                 f"{len(tokens.admins)} admin")


def check_image() -> Check | None:
    """Inside the zitops image: its version and revision (the build's record); None elsewhere."""
    from zitops import __version__
    from zitops.errors import ConfigError
    from zitops.preflight.image import IMAGE_INFO, image_info

    try:
        info = image_info()
    except ConfigError as exc:
        return Check("image", False, str(exc), fix="rebuild the image from the Containerfile")
    if info is None:
        return None
    detail = (f"zitops {info['version']}, revision {info['revision']}, source {info['source']}, "
              f"base {info['base']}; SBOM {info['sbom']}")
    if info["version"] != __version__:
        return Check("image", False, f"{detail}; but the installed zitops is {__version__}",
                     fix=f"rebuild the image with --build-arg VERSION={__version__} ({IMAGE_INFO})")
    return Check("image", True, detail)
