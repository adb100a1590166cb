"""Context parallel on two GPUs (nccl): the real-size architecture's image matches one GPU's.

Full-size random weights (30 heads, dim 3840), designer's 1024x1024 in bf16,
8 steps; a group of 2 (Ulysses, then ring) against the one-GPU worker with
the same seed: PSNR >= 40 dB (bf16 rounding, not quality). Skips, saying so,
with fewer than 2 GPUs. Speed is benchmarks/parallel.py's (device.sh ``parallel``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gpu_support import psnr
from tests.parallel_support import Worker, parallel_config
from zitops.engine.loader import FULL_RANDOM
from zitops.engine.request import GenerationRequest

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]
torch = pytest.importorskip("torch")

SAME_PIXELS_DB = 40.0
REAL: dict[str, Any] = {"precision": "bf16", "vae_precision": "bf16", "compile": False}


@pytest.fixture(scope="module", autouse=True)
def _two_gpus() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip(f"context parallel needs 2 CUDA GPUs; torch sees {torch.cuda.device_count()}")


@pytest.fixture(scope="module")
def single_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    worker = Worker(parallel_config(tmp_path_factory.mktemp("one"), 1, model=FULL_RANDOM, **REAL), gpu=0)
    try:
        yield worker.run(designer_request())[1][0]
    finally:
        worker.stop()


def designer_request() -> GenerationRequest:
    return GenerationRequest(prompt="a red fox in the snow, studio photo", seeds=(42,), width=1024, height=1024,
                             steps=8, sampler="euler")


@pytest.mark.parametrize("kind", ["ulysses", "ring"])
def test_two_gpus_make_the_one_gpu_image(kind: str, single_image: object, tmp_path: Path) -> None:
    worker = Worker(parallel_config(tmp_path, 2, kind, model=FULL_RANDOM, **REAL), gpu=0, visible="0,1")
    try:
        par = worker.ready.describe["effective"]["parallel"]
        assert (par["degree"], par["kind"], par["backend"]) == (2, kind, "nccl")
        assert [r["device"] for r in par["ranks"]] == ["cuda:0", "cuda:1"]
        if kind == "ulysses":
            assert par["heads_per_rank"] == 15  # 30 heads over 2 GPUs
        result, images = worker.run(designer_request())
        assert images[0].size == (1024, 1024)
        assert psnr(single_image, images[0]) >= SAME_PIXELS_DB
        assert result.info["memory"]["allocated_mib"] > 0  # the group's allocators (summed over its ranks)
    finally:
        worker.stop()
