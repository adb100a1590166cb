"""Real engine paths that need no GPU: a real out-of-memory inside the pipeline, and memory()."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import pixels, request, settings, tiny_model_dir
from zitops.engine.base import MemoryStats
from zitops.engine.diffusers_engine import DiffusersEngine
from zitops.errors import OutOfMemory

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiffusersEngine]:
    tmp = tmp_path_factory.mktemp("engine")
    eng = DiffusersEngine(settings(), str(tiny_model_dir()), state_dir=tmp, cache_dir=tmp / "cache")
    eng.setup("cpu")
    yield eng


class _OomAboveOne:
    """A forward pre-hook on the real transformer: torch.OutOfMemoryError for a batch above ``limit``.

    The pipeline hands the transformer one latent per image (a list), so the batch is its length.
    The error is raised where a real one would be: inside the pipeline call, mid-denoising.
    """

    def __init__(self, limit: int = 1) -> None:
        self.limit = limit
        self.batches: list[int] = []
        self.raised = 0

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs["x"]
        batch = len(x) if isinstance(x, list | tuple) else int(x.shape[0])
        self.batches.append(batch)
        if batch > self.limit:
            self.raised += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 20.00 GiB (batch {batch})")


def test_a_real_out_of_memory_error_splits_the_batch_and_the_pixels_are_unchanged(engine: DiffusersEngine) -> None:
    req = request((41, 42, 43, 44), width=64, height=64, steps=2)
    whole = engine.generate(req)  # no hook: the batch of 4 fits
    assert whole.info["oom_splits"] == 0 and whole.info["transformer_forwards"] == 2

    hook = _OomAboveOne()
    handle = engine.pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        split = engine.generate(req)
    finally:
        handle.remove()
    # 4 -> 2 + 2 -> 1 + 1 + 1 + 1: three splits, each after a real OutOfMemoryError in the pipeline.
    assert split.info["oom_splits"] == 3 and hook.raised == 3
    assert hook.batches == [4, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1], hook.batches
    assert split.seeds == req.seeds and len(split.images) == 4
    for a, b in zip(split.images, whole.images, strict=True):
        got, want = pixels(a), pixels(b)
        assert got.std() > 0
        # Per-image seeds make the images those of the unsplit run; a batch of 1 and a batch of 4
        # may round a float differently, which moves a pixel by at most one step.
        assert abs(got - want).max() <= 1


def test_a_single_image_that_does_not_fit_is_a_clear_error(engine: DiffusersEngine) -> None:
    hook = _OomAboveOne(limit=0)
    handle = engine.pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with pytest.raises(OutOfMemory, match="a single 64x64 image does not fit in device memory"):
            engine.generate(request((5, 6), width=64, height=64))
    finally:
        handle.remove()
    assert hook.batches == [2, 1]  # split once, then the single image failed: no endless retry
    assert engine.generate(request((5,), width=64, height=64)).images  # the engine is fine afterwards


def test_memory_on_the_cpu_reports_zeros_not_simulated_numbers(engine: DiffusersEngine, tmp_path: Path) -> None:
    before = engine.memory()
    engine.generate(request((7,)))
    after = engine.memory()
    engine.reset_peak_memory()  # no-ops on the CPU, and they say so by not failing
    engine.release_cache()
    for stats in (before, after, engine.memory()):
        assert isinstance(stats, MemoryStats)
        # The CPU has no device allocator: every figure is a real zero, never a guess.
        assert dataclasses.asdict(stats) == {
            "allocated_mib": 0.0, "reserved_mib": 0.0, "peak_allocated_mib": 0.0,
            "device_total_mib": 0.0, "device_used_mib": 0.0, "simulated": False}
    # A fresh engine that has not been set up reports the same: memory() needs no pipeline.
    assert DiffusersEngine(settings(), str(tiny_model_dir()), state_dir=tmp_path).memory() == MemoryStats()
