"""The small-card tiers on the real-size architecture, each under its memory cap.

``lowvram-8`` (fp8, model offload) and ``lowvram-12`` (fp8, the text encoder
streamed from pinned memory, the rest resident) are set up with the full-size
random model, quantized layer by layer from host memory, under
``torch.cuda.set_per_process_memory_fraction`` (the engine's
``memory_cap_gib``, as ``zitops bench --memory-cap-gib`` applies it) and
generate one 1024x1024 image under a cap of the card's size less 0.5 GiB (the
CUDA context a real card of that size also holds), with no OOM split.
Speed is the bench's (``benchmarks/device.sh tiers``), not asserted here.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.gpu_support import DEVICE, MIB, as_array, small_request
from zitops.engine.diffusers_engine import DiffusersEngine
from zitops.engine.loader import FULL_RANDOM
from zitops.profile import load_profile

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]
torch = pytest.importorskip("torch")

CONTEXT_GIB = 0.5
"""What the CUDA context takes on a real card, outside the allocator the cap limits: the cap is
the card's size less this, so the tier must fit what a real card of that size leaves the allocator."""


def _tier_run(name: str, cap_gib: float, tmp: str) -> dict[str, Any]:
    """In a spawned process: set the tier up under its cap, generate one image, report what it saw."""
    from zitops.engine.precision.offload import describe

    settings = load_profile(name).engine
    engine = DiffusersEngine(settings, FULL_RANDOM, state_dir=tmp, cache_dir=Path(tmp) / "cache",
                             memory_cap_gib=cap_gib)
    engine.setup(DEVICE)
    device = torch.device(DEVICE)
    torch.cuda.reset_peak_memory_stats(device)
    out = engine.generate(small_request((21,), width=1024, height=1024, steps=2))
    eff = engine.effective
    return {"cap": eff["memory_cap_gib"], "offload": eff["offload"], "fp8": eff["fp8"]["linears"],
            "layout": describe(engine.pipe), "oom_splits": out.info["oom_splits"], "size": out.images[0].size,
            "std": float(as_array(out.images[0]).std()), "seconds": out.seconds,
            "reserved": torch.cuda.max_memory_reserved(device), "allocated": torch.cuda.max_memory_allocated(device)}


# Each tier in its own spawned process, as a worker runs: the cap counts every allocation of the
# process, and the earlier GPU-lane files leave memory behind in theirs (seen 2026-11-29: lowvram-8
# ran out under its cap after test_gpu_fp8 and test_gpu_profiles, and passed alone).
@pytest.mark.parametrize(("name", "card_gib"), [("lowvram-8", 8), ("lowvram-12", 12)])
def test_each_tier_generates_under_its_cap(tmp_path: Path, name: str, card_gib: int) -> None:
    cap_gib = card_gib - CONTEXT_GIB
    settings = load_profile(name).engine
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        seen = pool.submit(_tier_run, name, cap_gib, str(tmp_path)).result()
    print(f"{name} under {cap_gib} GiB: peak reserved {seen['reserved'] / MIB:.0f} MiB, "
          f"allocated {seen['allocated'] / MIB:.0f} MiB, {seen['seconds']:.2f} s")
    assert seen["cap"] == cap_gib and seen["offload"] == settings.offload
    assert seen["fp8"]["transformer"] > 0 and seen["fp8"]["text_encoder"] > 0
    if settings.offload == "text_encoder":
        assert seen["layout"] == {"transformer": "cuda", "text_encoder": "group", "vae": "cuda"}
    # The caching allocator keeps freed blocks up to the cap and gives them back before
    # it would fail, so the reserved peak reaching the cap is expected; what must hold
    # is that the job ran whole (no OOM split) and the live tensors stayed under it.
    assert seen["oom_splits"] == 0 and seen["size"] == (1024, 1024) and seen["std"] > 0
    assert seen["allocated"] <= seen["reserved"] <= cap_gib * 2**30, f"peak reserved {seen['reserved'] / MIB:.0f} MiB"
