"""Split a batch that runs out of device memory, for any engine.

An engine's ``run_batch`` raises :class:`BatchOutOfMemory` when one attempt
does not fit. ``generate_split_on_oom`` then releases the allocator cache,
halves the batch and retries each half, recursively; only a single image
that does not fit fails the job, with :class:`OutOfMemory`. Since seeds are
per image, the images are the same as if the batch had fitted.
"""

from __future__ import annotations

import logging
from typing import Protocol

from zitops.engine.base import GenerationResult, ProgressFn
from zitops.engine.request import GenerationRequest
from zitops.errors import OutOfMemory

log = logging.getLogger("zitops.engine")


class BatchOutOfMemory(Exception):
    """Internal: one ``run_batch`` attempt did not fit in device memory."""


class BatchRunner(Protocol):
    """What the split logic needs from an engine."""

    def run_batch(self, request: GenerationRequest, progress: ProgressFn | None) -> GenerationResult:
        """Generate all of ``request``'s images in one go, or raise BatchOutOfMemory."""

    def release_cache(self) -> None:
        """Return cached allocator blocks to the device."""


def _merge(a: GenerationResult, b: GenerationResult) -> GenerationResult:
    info = dict(a.info)
    info["oom_splits"] = int(a.info.get("oom_splits", 0)) + int(b.info.get("oom_splits", 0))
    return GenerationResult(a.images + b.images, a.seeds + b.seeds, a.seconds + b.seconds, info)


def generate_split_on_oom(engine: BatchRunner, request: GenerationRequest,
                          progress: ProgressFn | None = None) -> GenerationResult:
    """Run ``request``; on OOM release the cache, split the batch in halves and retry."""
    try:
        result = engine.run_batch(request, progress)
        result.info.setdefault("oom_splits", 0)
        return result
    except BatchOutOfMemory as exc:
        engine.release_cache()
        if request.batch == 1:
            raise OutOfMemory(
                f"a single {request.width}x{request.height} image does not fit in device memory "
                f"({exc}); try a smaller size, the lowvram profile, or engine.offload=model"
            ) from None
    half = request.batch // 2
    log.warning("out of memory with a batch of %d; retrying as %d + %d", request.batch, half,
                request.batch - half)
    first, second = request.split(half)
    merged = _merge(generate_split_on_oom(engine, first, progress),
                    generate_split_on_oom(engine, second, progress))
    merged.info["oom_splits"] = int(merged.info["oom_splits"]) + 1
    return merged
