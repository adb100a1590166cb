"""The cost budget: a pure policy from a request's shape to its estimated seconds.

It imports nothing of the agent. The HTTP layer calls :func:`over_budget`
before a job is queued, so a request that would tie up a GPU for longer than
the profile allows gets a 422 that states the estimate and the budget.

The model is linear: megapixels x steps x images x forwards per step x a
rate in seconds per megapixel-step. On a GPU the rate is the profile's
``generation.seconds_per_megapixel_step``, calibrated from the bench
(docs/benchmarks.md). On a host whose workers all run on a CPU that figure
is wrong by orders of magnitude, so :func:`pick_rate` takes the pace this
host's own recent jobs measured (zitops.agent.pace) once there is one, and
says which it used. Attention grows faster than linearly with pixels, so
above the measured size the estimate errs low; the budget is a guard
against runaway requests, not a scheduler.
"""

from __future__ import annotations

import math

FORWARDS_PER_STEP = {"heun": 2.0}
"""Transformer forwards per step where a sampler needs more than one (Heun: 15 for 8 steps, ~2)."""


def work_per_step(width: int, height: int, images: int, sampler: str) -> float:
    """Megapixels x images x transformer forwards: what one denoising step of a job costs, in rate units."""
    return width * height / 1_000_000 * images * FORWARDS_PER_STEP.get(sampler, 1.0)


def pick_rate(calibrated: float, cpu_only: bool, measured: tuple[float, int] | None) -> tuple[float, str]:
    """(seconds per megapixel-step, where it comes from): a CPU host's measured pace, else the profile's."""
    if cpu_only and measured is not None:
        rate, jobs = measured
        return rate, f"measured on this host's CPU over its last {jobs} job{'s' if jobs != 1 else ''}"
    if cpu_only:
        return calibrated, ("the profile's GPU calibration (generation.seconds_per_megapixel_step); this host "
                            "runs on a CPU and has not measured a job of this size yet, so the wait may be far longer")
    return calibrated, "the profile's GPU calibration (generation.seconds_per_megapixel_step)"


def estimate_seconds(width: int, height: int, steps: int, images: int, sampler: str,
                     seconds_per_megapixel_step: float) -> float:
    """Estimated seconds of one job at ``seconds_per_megapixel_step``."""
    return work_per_step(width, height, images, sampler) * steps * seconds_per_megapixel_step


def effective_budget(max_job_seconds: float, job_timeout_s: float) -> float:
    """The budget a job must fit: the profile's, and never past the job timeout that would kill it."""
    return min(max_job_seconds, job_timeout_s)


def over_budget(width: int, height: int, steps: int, images: int, sampler: str, *,
                seconds_per_megapixel_step: float, max_job_seconds: float,
                job_timeout_s: float, basis: str = "") -> str | None:
    """None when the job fits; else one line stating the estimate and the budget."""
    estimate = estimate_seconds(width, height, steps, images, sampler, seconds_per_megapixel_step)
    budget = effective_budget(max_job_seconds, job_timeout_s)
    if estimate <= budget:
        return None
    sampler_note = f" x {FORWARDS_PER_STEP[sampler]:g} ({sampler})" if sampler in FORWARDS_PER_STEP else ""
    return (f"{width}x{height} x {steps} steps x {images} image{'s' if images != 1 else ''}{sampler_note} "
            f"is estimated at {math.ceil(estimate)} s{f' ({basis})' if basis else ''}, over this profile's budget of {budget:g} s "
            f"(generation.max_job_seconds); ask for fewer images, steps or pixels")
