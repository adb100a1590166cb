"""fp8 on a real GPU: the linears are really swapped, and the image stays close to bf16's.

fp8 needs compute capability 8.9 or newer (Ada, Hopper); elsewhere the engine
must say it kept bf16. The deviation is measured on the full-size architecture
(random weights, built on the GPU in seconds), where fp8 is meant to be used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.gpu_support import (
    DEVICE,
    as_array,
    gpu_engine,
    profile_settings,
    psnr,
    release,
    small_request,
)
from zitops.engine.accel import fp8_supported

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]
torch = pytest.importorskip("torch")

FP8_MIN_PSNR_DB = 30.0
"""The stated deviation: fp8 against bf16 on the same seed, at least this PSNR (docs/benchmarks.md
measured 38.4 dB for the full model at 1024x1024, 8 steps)."""


def _fp8_modules(transformer: Any) -> int:
    return sum(1 for m in transformer.modules() if type(m).__name__ == "Fp8Linear")


def test_fp8_swaps_the_block_linears_or_says_why_not(tmp_path: Path) -> None:
    engine = gpu_engine(profile_settings("designer", compile=False, fp8=True), tmp_path)
    try:
        eff = engine.effective
        if not fp8_supported(DEVICE):
            assert eff["fp8"].startswith("unsupported") and _fp8_modules(engine.pipe.transformer) == 0
            return
        assert eff["fp8_linears"] > 0 and _fp8_modules(engine.pipe.transformer) == eff["fp8_linears"]
        out = engine.generate(small_request((9,)))
        pixels = as_array(out.images[0])
        assert pixels.std() > 0
    finally:
        release(engine)


def test_fp8_forward_stays_within_the_stated_deviation_of_bf16_on_the_full_architecture(tmp_path: Path) -> None:
    if not fp8_supported(DEVICE):
        pytest.skip(f"fp8 needs compute capability 8.9+; this GPU is {torch.cuda.get_device_capability()}")
    request = small_request((7,), width=512, height=512, steps=4)
    images = {}
    for fp8 in (False, True):
        engine = gpu_engine(profile_settings("designer", compile=False, fp8=fp8), tmp_path, model="full-random")
        try:
            assert ("fp8_linears" in engine.effective) is fp8
            images[fp8] = engine.generate(request).images[0]
        finally:
            release(engine)
    assert as_array(images[False]).std() > 0
    db = psnr(images[True], images[False])
    print(f"fp8 against bf16, full architecture, 512x512, 4 steps: {db:.2f} dB")  # for the run's record
    assert FP8_MIN_PSNR_DB <= db < float("inf"), f"fp8 against bf16: {db:.1f} dB"
