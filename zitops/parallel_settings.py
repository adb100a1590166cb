"""``engine.parallel``, the profile's context-parallel knob, and the rule of what splits Z-Image.

Its own module so the profile's schema stays within its size; validated by
pydantic with ``extra="forbid"`` like every profile section. Torch-free.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ZIMAGE_HEADS = 30
"""Attention heads of Z-Image-Turbo's transformer: a Ulysses degree must divide it."""
SEQ_MULTIPLE = 32
"""Z-Image pads the image tokens and the caption tokens each to a multiple of this: a ring degree must divide it."""


class ParallelSettings(BaseModel):
    """Context parallel for one image (docs/parallel.md): ``degree`` GPUs share each denoising step.

    Ulysses splits the 30 heads (so its degree divides 30 and the 32-token
    padding: 2); ring passes key/value blocks around and needs only the
    sequence to split (2, 4, 8). Degree 1 is off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    degree: int = Field(1, ge=1, le=8)
    kind: Literal["ulysses", "ring"] = "ulysses"

    @model_validator(mode="after")
    def _divides(self) -> ParallelSettings:
        if self.degree > 1:
            problem = parallel_problem(self.kind, self.degree, ZIMAGE_HEADS)
            if problem:
                raise ValueError(problem)
        return self


def parallel_problem(kind: str, degree: int, heads: int) -> str | None:
    """Why ``kind`` at ``degree`` cannot split a transformer of ``heads`` heads, or None when it can."""
    if SEQ_MULTIPLE % degree:
        return (f"degree {degree}: the sequence (padded to multiples of {SEQ_MULTIPLE}) splits only "
                "into 2, 4 or 8 parts")
    if kind == "ulysses" and heads % degree:
        allowed = [d for d in (2, 4, 8) if heads % d == 0]
        return (f"degree {degree} with kind ulysses: {heads} heads do not divide by {degree} "
                f"(ulysses allows {', '.join(map(str, allowed)) or 'none'}; use kind: ring)")
    return None
