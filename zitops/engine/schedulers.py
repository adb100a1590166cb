"""Flow-matching schedulers that run THROUGH ``ZImagePipeline.__call__``.

The pipeline always calls ``scheduler.set_timesteps(n, device, sigmas=..., mu=...)``
and then ``scheduler.step(v, t, x)`` without a generator. Several diffusers
schedulers refuse that call (DPMSolverMultistep and FlowMatchHeun take no
``sigmas``; UniPC only takes them with flow sigmas), mishandle it (karras on
DPMSolver ignores flow sigmas), or draw unseeded noise (euler_a, SDE, LCM).

Each scheduler here is a thin subclass that accepts the pipeline's call,
computes zitops' own flow sigma schedule (the pipeline's sigmas, shifted, then
optionally re-spaced as karras or exponential), installs it in the form the
base class wants, and feeds the per-image generators into ``step`` so a seed
fixes every random draw. Same sigmas for every sampler; only the solver differs.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    FlowMatchLCMScheduler,
    UniPCMultistepScheduler,
)

from zitops.errors import InvalidRequest
from zitops.profile import SAMPLERS, SCHEDULES

KARRAS_RHO = 7.0


def flow_sigmas(base: list[float] | np.ndarray, shift: float, schedule: str) -> np.ndarray:
    """Shift the pipeline's sigmas (descending, in (0, 1]) and re-space them for ``schedule``."""
    s = np.asarray(base, dtype=np.float64)
    s = shift * s / (1.0 + (shift - 1.0) * s)
    n = len(s)
    if schedule == "simple" or n < 2:
        return s.astype(np.float32)
    hi, lo = float(s[0]), float(s[-1])
    ramp = np.linspace(0.0, 1.0, n)
    if schedule == "karras":
        inv_hi, inv_lo = hi ** (1.0 / KARRAS_RHO), lo ** (1.0 / KARRAS_RHO)
        out = (inv_hi + ramp * (inv_lo - inv_hi)) ** KARRAS_RHO
    elif schedule == "exponential":
        out = np.exp(math.log(hi) + ramp * (math.log(lo) - math.log(hi)))
    else:
        raise InvalidRequest(f"schedule: unknown {schedule!r}; valid: {', '.join(SCHEDULES)}")
    return out.astype(np.float32)


class _ZitopsSchedule:
    """Mixin: accept ZImagePipeline's ``set_timesteps`` call and seed ``step``."""

    zitops_schedule: str = "simple"
    zitops_shift: float = 3.0
    # Solvers that compute log(alpha) = log(1 - sigma) need sigma < 1, as
    # diffusers' own flow sigmas for them do (they start at 0.999).
    zitops_max_sigma: float = 1.0
    zitops_stochastic: bool = False
    zitops_generators: list[torch.Generator] | None = None
    config: Any

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None,
                      sigmas: list[float] | None = None, mu: float | None = None,
                      timesteps: list[float] | None = None) -> None:
        """Install zitops' sigma schedule; ``mu`` is unused (the model has a fixed shift)."""
        if sigmas is None:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps or sigmas")
            n = int(num_inference_steps)
            sigmas = np.linspace(1.0, 1.0 / n, n).tolist()
        sig = flow_sigmas(sigmas, self.zitops_shift, self.zitops_schedule)
        sig = np.minimum(sig, self.zitops_max_sigma).astype(np.float32)
        self._zitops_install(sig, device)

    def _zitops_install(self, sig: np.ndarray, device: Any) -> None:
        raise NotImplementedError

    def _zitops_tensors(self, sig: np.ndarray, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.from_numpy(sig).to(dtype=torch.float32, device=device)
        t = s * float(self.config.num_train_timesteps)
        return t, torch.cat([s, torch.zeros(1, device=s.device)])

    def _zitops_step_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.zitops_stochastic and kwargs.get("generator") is None and self.zitops_generators:
            kwargs["generator"] = self.zitops_generators
        return kwargs


class ZEuler(_ZitopsSchedule, FlowMatchEulerDiscreteScheduler):
    """Euler (and Euler a with ``stochastic_sampling``)."""

    def _zitops_install(self, sig: np.ndarray, device: Any) -> None:
        FlowMatchEulerDiscreteScheduler.set_timesteps(self, num_inference_steps=len(sig), device=device)
        self.timesteps, self.sigmas = self._zitops_tensors(sig, device)

    def step(self, *args: Any, **kwargs: Any) -> Any:
        """Base step, with the per-image generators when stochastic."""
        return FlowMatchEulerDiscreteScheduler.step(self, *args, **self._zitops_step_kwargs(kwargs))


class ZLCM(_ZitopsSchedule, FlowMatchLCMScheduler):
    """LCM: predict x0, re-noise to the next sigma with seeded noise."""

    zitops_stochastic = True

    def _zitops_install(self, sig: np.ndarray, device: Any) -> None:
        FlowMatchLCMScheduler.set_timesteps(self, num_inference_steps=len(sig), device=device)
        self.timesteps, self.sigmas = self._zitops_tensors(sig, device)

    def step(self, *args: Any, **kwargs: Any) -> Any:
        """Base step, with the per-image generators."""
        return FlowMatchLCMScheduler.step(self, *args, **self._zitops_step_kwargs(kwargs))


class ZHeun(_ZitopsSchedule, FlowMatchHeunDiscreteScheduler):
    """Heun: second order, two transformer calls per step but the last."""

    def _zitops_install(self, sig: np.ndarray, device: Any) -> None:
        FlowMatchHeunDiscreteScheduler.set_timesteps(self, num_inference_steps=len(sig), device=device)
        t, s = self._zitops_tensors(sig, device)
        # Same interleaving as the base class: every step after the first is
        # visited twice (predictor, corrector).
        self.timesteps = torch.cat([t[:1], t[1:].repeat_interleave(2)])
        self.sigmas = torch.cat([s[:1], s[1:-1].repeat_interleave(2), s[-1:]])


class ZDPMSolver(_ZitopsSchedule, DPMSolverMultistepScheduler):
    """DPM-Solver++ 2M (and 2M SDE) on flow sigmas."""

    zitops_max_sigma = 0.999

    def _zitops_install(self, sig: np.ndarray, device: Any) -> None:
        DPMSolverMultistepScheduler.set_timesteps(self, num_inference_steps=len(sig), device=device)
        t, s = self._zitops_tensors(sig, device)
        self.timesteps = t
        self.sigmas = s.to("cpu")  # the base class keeps sigmas on the CPU
        self.num_inference_steps = len(sig)

    def step(self, *args: Any, **kwargs: Any) -> Any:
        """Base step, with the per-image generators for the SDE variant."""
        return DPMSolverMultistepScheduler.step(self, *args, **self._zitops_step_kwargs(kwargs))


class ZUniPC(_ZitopsSchedule, UniPCMultistepScheduler):
    """UniPC (bh2) on flow sigmas."""

    zitops_max_sigma = 0.999

    def _zitops_install(self, sig: np.ndarray, device: Any) -> None:
        UniPCMultistepScheduler.set_timesteps(self, num_inference_steps=len(sig), device=device)
        t, s = self._zitops_tensors(sig, device)
        self.timesteps = t
        self.sigmas = s.to("cpu")
        self.num_inference_steps = len(sig)


# sampler -> (class, config overrides, stochastic)
_SPECS: dict[str, tuple[type[_ZitopsSchedule], dict[str, Any], bool]] = {
    "euler": (ZEuler, {}, False),
    "euler_a": (ZEuler, {"stochastic_sampling": True}, True),
    "heun": (ZHeun, {}, False),
    "dpmpp_2m": (ZDPMSolver, {"algorithm_type": "dpmsolver++", "solver_order": 2}, False),
    "dpmpp_2m_sde": (ZDPMSolver, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, True),
    "unipc": (ZUniPC, {"solver_order": 2, "solver_type": "bh2", "predict_x0": True}, False),
    "lcm": (ZLCM, {}, True),
}
_FLOW_SOLVER = {"prediction_type": "flow_prediction", "use_flow_sigmas": True,
                "lower_order_final": True, "final_sigmas_type": "zero"}


def make_scheduler(base_config: Any, sampler: str, schedule: str = "simple") -> Any:
    """A scheduler for ``sampler``/``schedule`` built from the pipeline's scheduler config."""
    if sampler not in _SPECS:
        raise InvalidRequest(f"sampler: unknown {sampler!r}; valid: {', '.join(SAMPLERS)}")
    if schedule not in SCHEDULES:
        raise InvalidRequest(f"schedule: unknown {schedule!r}; valid: {', '.join(SCHEDULES)}")
    cls, overrides, stochastic = _SPECS[sampler]
    cfg = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    shift = float(cfg.get("shift", 3.0))
    num_train = int(cfg.get("num_train_timesteps", 1000))
    if cls in (ZDPMSolver, ZUniPC):
        cfg = {"num_train_timesteps": num_train, "flow_shift": shift, **_FLOW_SOLVER, **overrides}
    elif cls is ZHeun:
        cfg = {"num_train_timesteps": num_train, "shift": shift}
    else:
        cfg = {**cfg, **overrides}
    accepted = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    cfg = {k: v for k, v in cfg.items() if k in accepted}
    sched = cls.from_config(cfg)  # type: ignore[attr-defined]
    sched.zitops_schedule = schedule
    sched.zitops_shift = shift
    sched.zitops_stochastic = stochastic
    return sched


def is_stochastic(sampler: str) -> bool:
    """True when the sampler draws fresh noise every step."""
    return _SPECS[sampler][2]
