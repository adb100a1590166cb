"""Real device memory: the engine's allocator figures and NVML's after a job, and a real
out-of-memory under a per-process memory cap, split and succeeded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.gpu_support import (
    DEVICE,
    MIB,
    as_array,
    gpu_engine,
    profile_settings,
    release,
    small_request,
)
from zitops.engine.base import GenerationResult
from zitops.engine.request import GenerationRequest
from zitops.gpu import NvmlMonitor

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]
torch = pytest.importorskip("torch")


def test_vram_stats_after_a_job_are_real(tmp_path: Path) -> None:
    engine = gpu_engine(profile_settings("designer", compile=False), tmp_path)
    try:
        engine.generate(small_request((1, 2)))
        m = engine.memory()
        total = torch.cuda.get_device_properties(0).total_memory / MIB
        assert m.simulated is False
        assert 0 < m.allocated_mib <= m.reserved_mib and m.peak_allocated_mib >= m.allocated_mib
        assert m.device_total_mib == pytest.approx(total, rel=0.01)
        assert m.reserved_mib < m.device_used_mib <= m.device_total_mib  # the CUDA context is on top
        with NvmlMonitor([0]) as nvml:
            (sample,) = nvml.sample()
        assert nvml.reason == "closed" and sample.index == 0
        # NVML sees at least what this process's allocator holds, on a device of the same size.
        assert sample.used_mib >= m.reserved_mib and sample.total_mib == pytest.approx(total, rel=0.01)
        mine = sample.processes.get(os.getpid())
        assert os.getpid() in sample.processes, f"NVML lists {sorted(sample.processes)}, not this pid"
        assert mine is None or mine >= m.reserved_mib  # None: NVML cannot tell per-process use here
        engine.release_cache()
        assert engine.memory().reserved_mib <= m.reserved_mib
    finally:
        release(engine)


def test_a_real_oom_under_a_memory_cap_splits_the_batch_and_succeeds(tmp_path: Path) -> None:
    # Full VAE decode at 1024x1024: its activations grow with the batch, the weights do not.
    # fp32, and cuDNN autotuning off for this test: autotuning sizes its workspaces to the memory
    # it finds, which would blur the two peaks the cap is set between.
    settings = profile_settings("designer", compile=False, vae_decode="full", max_batch=4,
                                precision="fp32", vae_precision="fp32")
    engine = gpu_engine(settings, tmp_path)
    device = torch.device(DEVICE)
    total = torch.cuda.get_device_properties(device).total_memory
    batch = small_request((11, 12, 13, 14), width=1024, height=1024, steps=1)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False

    def peak_reserved(req: GenerationRequest) -> tuple[int, GenerationResult]:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        result = engine.generate(req)
        return int(torch.cuda.max_memory_reserved(device)), result

    try:
        single = batch.split(1)[0]
        peak_reserved(single)  # warm-up: cuBLAS workspaces, the text encoder's CUDA graph
        one_peak, _ = peak_reserved(single)
        four_peak, whole = peak_reserved(batch)
        assert whole.info["oom_splits"] == 0
        assert four_peak > one_peak * 1.5, (one_peak, four_peak)  # the cap below separates the two
        cap = one_peak + (four_peak - one_peak) // 3  # a batch of one fits, four cannot
        print(f"peak reserved: batch 1 {one_peak / MIB:.0f} MiB, batch 4 {four_peak / MIB:.0f} MiB; "
              f"cap {cap / MIB:.0f} MiB")  # for the run's record
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(cap / total, device)
        try:
            split = engine.generate(batch)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        assert split.info["oom_splits"] >= 1 and split.seeds == batch.seeds
        assert len(split.images) == 4
        for a, b in zip(split.images, whole.images, strict=True):
            diff = abs(as_array(a) - as_array(b))
            print(f"split vs whole: max abs diff {diff.max():.0f}")
            # Per-image seeds: the same images, up to the rounding of a different batch size.
            assert diff.max() <= 2, diff.max()
    finally:
        torch.backends.cudnn.benchmark = benchmark
        release(engine)
