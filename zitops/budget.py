"""The cost budget: a pure policy from a request's shape to its estimated seconds.

It imports nothing of the agent. The HTTP layer calls :func:`over_budget`
before a job is queued, so a request that would tie up a GPU for longer than
the profile allows gets a 422 that states the estimate and the budget.

The model is linear: megapixels x steps x images x forwards per step x the
profile's ``generation.seconds_per_megapixel_step``, a constant calibrated
from the bench (docs/benchmarks.md). Attention grows faster than linearly
with pixels, so above the calibrated size the estimate errs low; the budget
is a guard against runaway requests, not a scheduler.
"""

from __future__ import annotations

import math

FORWARDS_PER_STEP = {"heun": 2.0}
"""Transformer forwards per step where a sampler needs more than one (Heun: 15 for 8 steps, ~2)."""


def estimate_seconds(width: int, height: int, steps: int, images: int, sampler: str,
                     seconds_per_megapixel_step: float) -> float:
    """Estimated GPU seconds of one job on the profile's calibrated card."""
    megapixels = width * height / 1_000_000
    return megapixels * steps * images * FORWARDS_PER_STEP.get(sampler, 1.0) * seconds_per_megapixel_step


def effective_budget(max_job_seconds: float, job_timeout_s: float) -> float:
    """The budget a job must fit: the profile's, and never past the job timeout that would kill it."""
    return min(max_job_seconds, job_timeout_s)


def over_budget(width: int, height: int, steps: int, images: int, sampler: str, *,
                seconds_per_megapixel_step: float, max_job_seconds: float,
                job_timeout_s: float) -> str | None:
    """None when the job fits; else one line stating the estimate and the budget."""
    estimate = estimate_seconds(width, height, steps, images, sampler, seconds_per_megapixel_step)
    budget = effective_budget(max_job_seconds, job_timeout_s)
    if estimate <= budget:
        return None
    sampler_note = f" x {FORWARDS_PER_STEP[sampler]:g} ({sampler})" if sampler in FORWARDS_PER_STEP else ""
    return (f"{width}x{height} x {steps} steps x {images} image{'s' if images != 1 else ''}{sampler_note} "
            f"is estimated at {math.ceil(estimate)} s, over this profile's budget of {budget:g} s "
            f"(generation.max_job_seconds); ask for fewer images, steps or pixels")
