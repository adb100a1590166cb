"""The engine contract shared by the real and the fault-injecting engines.

LitServe's shape: construct cheaply, ``setup(device)`` loads the model (never
``__init__``), then ``generate`` per job. Workers hold exactly one engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from zitops.engine.request import GenerationRequest

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(step, total_steps)`` after each denoising step."""

STOP_INTERRUPT = "interrupt"
"""A StepHook's stop: end the denoising now and return images from the current latents (A1111's interrupt)."""
STOP_CANCEL = "cancel"
"""A StepHook's stop: abandon the job; the engine raises JobCancelled."""


class StepHook(Protocol):
    """A ProgressFn that also steers the job: previews on demand, interrupt and cancel between steps.

    The worker passes one as ``progress``; engines look for its methods, so a
    plain ProgressFn still works.
    """

    def __call__(self, step: int, total: int) -> None:
        """After step ``step`` of ``total``; may send the preview handed over just before."""

    def wants_preview(self, step: int) -> bool:
        """Whether to decode a preview image of step ``step`` (decoding costs GPU time)."""

    def preview(self, step: int, image: Any) -> None:
        """The preview of step ``step`` (a small PIL image), handed over before ``__call__``."""

    def stop(self) -> str | None:
        """None to go on, or STOP_INTERRUPT / STOP_CANCEL."""


@dataclass(frozen=True)
class MemoryStats:
    """Device memory as the engine's allocator sees it, in MiB.

    On a CPU machine the real engine reports zeros and the fault engine reports
    its simulated numbers through this same type.
    """

    allocated_mib: float = 0.0
    reserved_mib: float = 0.0
    peak_allocated_mib: float = 0.0
    device_total_mib: float = 0.0
    device_used_mib: float = 0.0
    simulated: bool = False


@dataclass
class GenerationResult:
    """Images (PIL) plus what produced them."""

    images: list[Any]
    seeds: tuple[int, ...]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """What a worker needs from an engine."""

    name: str

    def setup(self, device: str) -> None:
        """Load the model onto ``device`` ("cuda:0" or "cpu")."""

    def generate(self, request: GenerationRequest, progress: ProgressFn | None = None) -> GenerationResult:
        """Make ``request.batch`` images. Raises OutOfMemory for a single image that cannot fit."""

    def memory(self) -> MemoryStats:
        """Current allocator statistics."""

    def release_cache(self) -> None:
        """Run gc and return cached allocator blocks to the device (idle only)."""

    def describe(self) -> dict[str, Any]:
        """Model, precision and knobs, for /status and PNG metadata."""
