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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zitops.config import AgentConfig, load_config
from zitops.errors import ModelError, ZitopsError
from zitops.profile import Profile, load_profile

TARGETS = ("supervisor", "systemd", "k8s")

MEASURED_PEAK_GIB = {"designer": 21.3, "poster": 21.3, "ecommerce": 21.4, "lowvram": 12.1}
"""Engine peak VRAM per profile on an H200 (README "Measured speed"); a custom profile takes the largest."""

FP8_PEAK_GIB = 15.7
"""designer with ``engine.fp8: true`` (README)."""

OFFLOAD_PEAK_GIB = MEASURED_PEAK_GIB["lowvram"]
"""Any profile with ``engine.offload`` set: lowvram's measured peak (model offload)."""

MIN_FREE_GIB = {"outputs": 1.0, "cache": 2.0}
"""Free disk wanted: a day of images under the result TTL; compile, Triton and tokenizer caches."""

OUT_LAYOUT = {"state_dir": "state", "log_dir": "logs", "output_dir": "outputs", "cache_dir": "cache"}
"""Where ``zitops deploy --out DIR`` puts the agent's directories (without --install)."""


class PreflightFailed(ZitopsError):
    """One or more doctor checks failed; the message names each with its fix."""


@dataclass(frozen=True)
class DoctorRequest:
    """What the user asked: the CLI maps its switches onto this, one to one."""

    profile: str | None = None
    model: str | None = None
    port: int | None = None
    config: str | None = None
    target: str = "supervisor"
    out: Path = Path("deploy")


@dataclass(frozen=True)
class Setup:
    """The deployment being checked: from --config, else from the switches and deploy's --out layout."""

    profile: Profile
    model: str
    host: str
    port: int
    gpus: list[int] | str
    paths: dict[str, Path]
    target: str
    source: str


@dataclass(frozen=True)
class Check:
    """One verdict. ``warning``: it holds, but the detail deserves a look."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    warning: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: name, ok, detail, and fix/warning where they apply."""
        data = asdict(self)
        if self.fix is None:
            del data["fix"]
        if not self.warning:
            del data["warning"]
        return data


@dataclass(frozen=True)
class Report:
    """Every check of one run, in order."""

    setup: Setup
    checks: tuple[Check, ...]

    @property
    def failed(self) -> list[Check]:
        """The checks that do not hold."""
        return [c for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        """True when everything needed holds (warnings allowed)."""
        return not self.failed

    def to_json(self) -> str:
        """``{"ok", "profile", "model", "port", "checks": [{"name", "ok", "detail"}, ...]}``."""
        s = self.setup
        return json.dumps({"ok": self.ok, "profile": s.profile.name, "model": s.model, "port": s.port,
                           "target": s.target, "checks": [c.to_dict() for c in self.checks]}, indent=2)

    def lines(self) -> list[str]:
        """The human form: one line per check, a fix under each failure."""
        s = self.setup
        out = [f"zitops doctor: profile {s.profile.name}, model {s.model}, {s.host}:{s.port}, "
               f"target {s.target} ({s.source})"]
        width = max(len(c.name) for c in self.checks)
        for c in self.checks:
            mark = "FAIL" if not c.ok else ("warn" if c.warning else "ok")
            out.append(f"  {mark:<4}  {c.name:<{width}}  {c.detail}")
            if c.fix and not c.ok:
                out.append(f"  {'':<4}  {'':<{width}}  fix: {c.fix}")
        failed = self.failed
        out.append("all needed checks hold" if not failed else
                   f"{len(failed)} check(s) failed: {', '.join(c.name for c in failed)}")
        return out

    def error(self) -> PreflightFailed:
        """The error the CLI exits with: each failed check and its detail (the report holds the fixes)."""
        parts = [f"{c.name} ({c.detail})" for c in self.failed]
        return PreflightFailed(f"doctor: {len(parts)} check(s) failed: {'; '.join(parts)}; "
                               "each one's fix is in the report above")


@dataclass
class GpuSeen:
    """A GPU as NVML lists it."""

    index: int
    name: str
    total_mib: float


@dataclass
class Probe:
    """What the GPU checks learned once, shared by the checks after them."""

    gpus: list[GpuSeen] = field(default_factory=list)
    nvml_ok: bool = False


def resolve(req: DoctorRequest) -> Setup:
    """The deployment to check; --profile/--model/--port override a --config's values."""
    if req.target not in TARGETS:
        raise ZitopsError(f"--target {req.target!r}: use one of {', '.join(TARGETS)}")
    config: AgentConfig | None = load_config(req.config) if req.config else None
    if config is not None:
        profile = load_profile(req.profile) if req.profile else config.profile
        paths = {k: Path(v) for k, v in config.paths.model_dump().items()}
        host, gpus, source = config.host, config.gpus, f"config {req.config}"
    else:
        profile = load_profile(req.profile or "designer")
        out = req.out.expanduser().absolute()
        paths = {k: out / v for k, v in OUT_LAYOUT.items()}
        host, gpus, source = "127.0.0.1", "auto", f"the layout of zitops deploy --out {out}"
    model = req.model or (config.model if config is not None else "tiny")
    port = req.port or (config.port if config is not None else 7860)
    return Setup(profile, model, host, port, gpus, paths, req.target, source)


def need_gib(profile: Profile) -> float:
    """The profile's measured peak VRAM (GiB) on one GPU."""
    if profile.engine.offload != "none":
        return OFFLOAD_PEAK_GIB
    if profile.engine.fp8:
        return FP8_PEAK_GIB
    return MEASURED_PEAK_GIB.get(profile.name, max(MEASURED_PEAK_GIB.values()))


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
    from zitops import doctor_checks as dc

    setup = resolve(req)
    needs_gpu = not model_is_tiny(setup.model)
    probe = Probe()
    checks: list[Check] = []
    checks.append(dc.check_torch(needs_gpu))
    checks.append(dc.check_nvml(setup, needs_gpu, probe))
    checks.extend(dc.check_gpus(setup, needs_gpu, probe, need_gib(setup.profile)))
    checks.append(check_model(setup.model, setup.paths["state_dir"]))
    checks.extend(dc.check_dirs(setup))
    checks.extend(dc.check_disk(setup))
    checks.append(dc.check_port(setup.host, setup.port))
    checks.append(dc.check_service_manager(setup))
    checks.append(dc.check_compile_cache(setup))
    return Report(setup, tuple(checks))


def hard_failures(model: str, state_dir: Path, host: str, port: int, *, start: bool) -> list[Check]:
    """The checks ``zitops deploy`` should refuse on: the model, and with ``--start`` the port.

    They can only fail hard (nothing on this host makes them pass later), unlike
    the GPU checks, which a deploy rendered for another host must not run.
    """
    from zitops.doctor_checks import check_port

    checks = [check_model(model, state_dir)]
    if start:
        checks.append(check_port(host, port))
    return [c for c in checks if not c.ok]
