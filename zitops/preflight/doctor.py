"""``zitops doctor``: can this host run a profile? A preflight of named checks.

Each check is a function from the resolved :class:`Setup` to :class:`Check`
values (name, ok, detail, fix). :func:`run` gathers them into a
:class:`Report`; the CLI prints it and exits non-zero when a check failed.
The GPU stack (torch, pynvml) is imported inside the checks that need it,
never when this module is imported.

Whether a GPU is *needed* (a failed check) or only expected (a warning):
real weights need one, since every profile is sized for a GPU (the measured
peaks below) and the full model on a CPU takes minutes per image; the tiny
random model (``--model tiny``, or a directory ``zitops model make-tiny``
wrote) runs on a CPU, so there "no GPU" is a warning.
"""

from __future__ import annotations

from pathlib import Path

from zitops.config import AgentConfig, load_config
from zitops.errors import ModelError, ZitopsError
from zitops.preflight.doctor_model import (
    FP8_PEAK_GIB,
    GROUP_BOUND_GIB,
    MEASURED_PEAK_GIB,
    OFFLOAD_PEAK_GIB,
    OUT_LAYOUT,
    TARGETS,
    Check,
    DoctorRequest,
    Probe,
    Report,
    Setup,
)
from zitops.profile import Profile, load_profile
from zitops.tiers import AUTO_PROFILE, Card, TierChoice, choose_tier


def resolve(req: DoctorRequest) -> Setup:
    """The deployment to check; --profile/--model/--port override a --config's values."""
    if req.target not in TARGETS:
        raise ZitopsError(f"--target {req.target!r}: use one of {', '.join(TARGETS)}")
    config: AgentConfig | None = load_config(req.config) if req.config else None
    if config is not None:
        paths = config.paths.as_paths()
        host, gpus, source = config.host, config.gpus, f"config {req.config}"
        tokens_file, config_file = config.auth.tokens_file, Path(req.config or "").absolute()
    else:
        out = req.out.expanduser().absolute()
        paths = {k: out / v for k, v in OUT_LAYOUT.items()}
        host, gpus, source = "127.0.0.1", "auto", f"the layout of zitops deploy --out {out}"
        tokens_file, config_file = None, None
    model = req.model or (config.model if config is not None else "tiny")
    port = req.port or (config.port if config is not None else 7860)
    if req.profile == AUTO_PROFILE:
        # The same policy deploy --profile auto applies, on this host's cards.
        profile = load_profile(tier_of_host(model, gpus).profile)
    elif req.profile or config is None:
        profile = load_profile(req.profile or "designer")
    else:
        profile = config.profile
    return Setup(profile, model, host, port, gpus, paths, req.target, source, tokens_file, config_file)


def tier_of_host(model: str, gpus: list[int] | str) -> TierChoice:
    """The tier policy on this host's cards (NVML) that ``gpus`` names; raises TierError when none fits."""
    from zitops.gpu import probe_gpus

    cards = [Card(g.index, g.name, g.total_mib) for g in probe_gpus() if gpus == "auto" or g.index in gpus]
    return choose_tier(cards, tiny=model_is_tiny(model))


def need_gib(profile: Profile) -> float:
    """The profile's measured peak VRAM (GiB) on one GPU."""
    if profile.engine.offload == "group":
        return GROUP_BOUND_GIB
    bf16_peak = MEASURED_PEAK_GIB.get(profile.name, max(MEASURED_PEAK_GIB.values()))
    if profile.engine.offload != "none":
        mode = "model" if profile.engine.offload == "sequential" else profile.engine.offload
        weights = "fp8" if profile.engine.fp8 not in (False, "auto") else "bf16"  # auto may mean bf16
        return OFFLOAD_PEAK_GIB.get((mode, weights), bf16_peak)
    if profile.engine.fp8 == "auto":  # bf16 on a card without fp8 GEMMs: its peak is the bound
        return max(FP8_PEAK_GIB.get(profile.name, 0.0), bf16_peak)
    if profile.engine.fp8:
        return FP8_PEAK_GIB.get(profile.name, max(FP8_PEAK_GIB.values()))
    return bf16_peak


def model_is_tiny(model: str) -> bool:
    """True for the tiny random model, by name or by a directory make-tiny wrote."""
    if model == "tiny":
        return True
    from zitops.engine.loader import check_model

    path = Path(model).expanduser()
    return path.is_dir() and check_model(path).tiny


def check_model(model: str, state_dir: Path) -> Check:
    """The weights are complete: the same resolution and check the agent runs (``zitops model check``)."""
    from zitops.engine.loader import FULL_RANDOM, check_model, resolve_model

    if model == "tiny":
        built = state_dir / "models" / "tiny"
        if check_model(built).ok:
            return Check("model", True, f"tiny: {built} (random weights: images are noise)", warning=True)
        return Check("model", True, f"tiny: built at the first start under {built} in seconds "
                     "(random weights: images are noise)", warning=True)
    if model == FULL_RANDOM:
        return Check("model", True, "full-random: the real-size architecture with random weights, "
                     "built on the GPU at start (no files)", warning=True)
    try:
        path = resolve_model(model)
    except ModelError as exc:
        return Check("model", False, str(exc).split("; download")[0],
                     fix="download a diffusers-format Z-Image-Turbo snapshot (e.g. Tongyi-MAI/Z-Image-Turbo) "
                         "to that path and check it with `zitops model check PATH`, or pass --model")
    return Check("model", True, check_model(path).summary())


def run(req: DoctorRequest) -> Report:
    """Resolve the deployment and run every check, in the order an operator would fix them."""
    from zitops.preflight import doctor_checks as dc

    setup = resolve(req)
    needs_gpu = not model_is_tiny(setup.model)
    probe = Probe()
    image = dc.check_image()
    checks: list[Check] = [] if image is None else [image]
    checks.append(dc.check_torch(needs_gpu))
    checks.append(dc.check_nvml(setup, needs_gpu, probe))
    checks.extend(dc.check_gpus(setup, needs_gpu, probe, need_gib(setup.profile)))
    checks.append(dc.check_tier(setup, needs_gpu, probe))
    checks.append(check_model(setup.model, setup.paths["state_dir"]))
    checks.extend(_tokens(setup))
    checks.extend(dc.check_dirs(setup))
    checks.extend(dc.check_disk(setup))
    checks.append(dc.check_shm(setup))
    port, own_pid = port_check(setup)
    checks.append(port)
    checks.append(dc.check_service_manager(setup))
    checks.append(dc.check_compile_cache(setup))
    checks.append(dc.check_fast_decode(setup))
    if own_pid is not None:
        checks.extend(_live(setup))
    return Report(setup, tuple(checks))


def _tokens(setup: Setup) -> list[Check]:
    from zitops.preflight.doctor_checks import check_tokens

    found = check_tokens(setup)
    return [] if found is None else [found]


def port_check(setup: Setup) -> tuple[Check, int | None]:
    """The port is free, or held by this deployment's own agent (then its pid, for the live checks)."""
    from zitops.preflight.doctor_checks import check_port
    from zitops.preflight.doctor_live import own_agent

    found = check_port(setup.host, setup.port)
    if found.ok:
        return found, None
    pid = own_agent(setup)
    if pid is None:
        return found, None
    return Check("port", True, f"{setup.host}:{setup.port} is held by this deployment's own agent (pid {pid})"), pid


def _live(setup: Setup) -> list[Check]:
    from zitops.preflight.doctor_live import live_checks
    from zitops.preflight.reach import agent_url, deployment_token

    assert setup.config_file is not None  # own_agent found it
    config = load_config(setup.config_file)
    return live_checks(setup, agent_url(config), deployment_token(config), need_gib(setup.profile))


def preflight(config: AgentConfig, config_file: Path) -> list[Check]:
    """What ``deploy --start`` checks before it writes or starts anything; the failed ones.

    The tokens file (as the agent reads it), the model, the directories, and the
    port unless this deployment's own agent holds it (``--start`` restarts it in place).
    """
    from zitops.preflight import doctor_checks as dc

    paths = config.paths.as_paths()
    setup = Setup(config.profile, config.model, config.host, config.port, config.gpus, paths, "supervisor",
                  f"config {config_file}", config.auth.tokens_file, config_file.absolute())
    checks = [*_tokens(setup), check_model(setup.model, setup.paths["state_dir"]), *dc.check_dirs(setup),
              port_check(setup)[0]]
    return [c for c in checks if not c.ok]


def hard_failures(model: str, state_dir: Path, host: str, port: int, *, start: bool) -> list[Check]:
    """The checks ``zitops deploy`` should refuse on: the model, and with ``--start`` the port.

    They can only fail hard (nothing on this host makes them pass later), unlike
    the GPU checks, which a deploy rendered for another host must not run.
    """
    from zitops.preflight.doctor_checks import check_port

    checks = [check_model(model, state_dir)]
    if start:
        checks.append(check_port(host, port))
    return [c for c in checks if not c.ok]
