"""``zitops doctor``'s values: the request, the resolved setup, checks and the report.

Kept apart from :mod:`zitops.preflight.doctor` (the run) and :mod:`zitops.preflight.doctor_checks`
(the checks) so that both import these and neither imports the other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zitops.errors import ZitopsError
from zitops.profile import Profile

TARGETS = ("supervisor", "systemd", "k8s")

MEASURED_PEAK_GIB = {"designer": 21.3, "poster": 21.3, "ecommerce": 21.4}
"""Engine peak VRAM per bf16 profile on an H200 (README "Measured speed"); a custom profile takes the largest."""

FP8_PEAK_GIB = {"lowvram": 13.0, "ecommerce": 14.5, "designer": 15.7}
"""Peaks with ``engine.fp8`` on (H200, 2026-11-29: lowvram with the bf16 keep-list, ecommerce with it and a
TAEF1-shaped decoder; designer from 2026-11-26, transformer only); a custom fp8 profile takes the largest."""

OFFLOAD_PEAK_GIB = {("model", "bf16"): 12.1, ("model", "fp8"): 7.0, ("text_encoder", "fp8"): 10.6}
"""``engine.offload`` mode (``sequential`` as ``model``) and weight format: bf16 model offload 12.1 GiB
(H200, 2026-11-26); fp8 model offload (lowvram-8) 6.99 GiB allocated under a 7.5 GiB cap; fp8 with the
text encoder streamed (lowvram-12) 10.58 GiB under an 11.5 GiB cap (H200, 2026-11-29). bf16 with the
text encoder streamed is not measured: its bound is the bf16 resident peak."""

GROUP_BOUND_GIB = 11.5
"""``engine.offload: group`` (no built-in profile uses it): not measured to a finish on a GPU, so the
bound is the 12 GiB card it was built for, less its CUDA context (docs/benchmarks.md "Tiers")."""

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
    tokens_file: str | None = None  # the config's auth.tokens_file
    config_file: Path | None = None  # the config.yaml checked, if any: its running agent is "its own"


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
