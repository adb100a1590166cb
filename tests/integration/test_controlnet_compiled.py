"""The ControlNet with ``engine.compile``: its control blocks compiled one by one, as on a GPU profile.

The compiled path ran nowhere before (the GPU features run was cut off during
its first control request), so the tiny pipeline compiles it on the CPU
(``compile_on_cpu``, about a minute on two busy cores) and must give the eager
engine's image for the same seed and control map.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.controlnet_support import make_controlnet
from tests.engine_support import pixels, request, settings, tiny_model_dir
from zitops.engine.diffusers_engine import DiffusersEngine

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def _engine(tmp: Path, controlnet: Path, *, compiled: bool) -> DiffusersEngine:
    eng = DiffusersEngine(settings(compile=compiled), str(tiny_model_dir()), state_dir=tmp,
                          cache_dir=tmp / "cache", controlnet_dir=controlnet, compile_on_cpu=compiled)
    eng.setup("cpu")
    return eng


def test_compiled_control_blocks_give_the_eager_image(tmp_path: Path) -> None:
    from PIL import Image

    from zitops.agent.http.image_input import to_png_b64

    controlnet = make_controlnet(tmp_path / "cn")
    control = to_png_b64(Image.effect_noise((32, 32), 64).convert("RGB"), "RGB")
    ask = request((4,), control_image=control, control_strength=1.0, steps=2)
    eager = _engine(tmp_path / "eager", controlnet, compiled=False).generate(ask)
    compiled_engine = _engine(tmp_path / "compiled", controlnet, compiled=True)
    out = compiled_engine.generate(ask)
    assert out.info["mode"] == "control" and out.images[0].size == (32, 32)
    blocks = compiled_engine.controlnets.pipeline.controlnet.control_layers
    assert all(getattr(block, "_compiled_call_impl", None) is not None for block in blocks), \
        "every control block compiled"
    # fp32 on the CPU: inductor's fused kernels round differently from eager, by a pixel level at most.
    assert int(abs(pixels(out.images[0]) - pixels(eager.images[0])).max()) <= 1
