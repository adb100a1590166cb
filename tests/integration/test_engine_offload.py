"""``engine.offload: group`` with the tiny model on the CPU.

Group offload is for CUDA (pinned memory, streams): on the CPU the engine
ignores it and says so, as it does every offload mode. The mechanism itself
(diffusers' group hooks on the transformer and the text encoder, the VAE
resident, the levers applied first) runs here without a stream, and must
give the same image as the pipeline without it. Speed and the memory caps are
the GPU lane's (tests/gpu/test_gpu_tiers.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import pixels, request, settings, tiny_model_dir
from zitops.engine.diffusers_engine import DiffusersEngine
from zitops.engine.precision.offload import describe
from zitops.errors import EngineError
from zitops.profile import load_profile

torch = pytest.importorskip("torch")

GROUP_12 = Path(__file__).resolve().parents[2] / "benchmarks" / "tiers" / "group-12.yaml"
"""bf16 with group offload, the variant the tiers bench compares against lowvram-12's fp8."""


def test_group_offload_on_the_cpu_is_ignored_with_a_note_and_generates(tmp_path: Path) -> None:
    s = load_profile(str(GROUP_12)).engine.model_copy(
        update={"precision": "fp32", "vae_precision": "fp32"})
    engine = DiffusersEngine(s, str(tiny_model_dir()), state_dir=tmp_path, cache_dir=tmp_path / "cache")
    engine.setup("cpu")
    assert engine.effective["offload"] == "none" and "offload_group" not in engine.effective
    assert "offload=group needs a CUDA device; ignored on cpu" in engine.notes
    out = engine.generate(request((5,), width=64, height=64))
    assert out.images[0].size == (64, 64) and pixels(out.images[0]).std() > 0


def _pipeline() -> Any:
    from zitops.engine.loader import load_pipeline
    from zitops.engine.precision.accel import apply_levers

    pipe = load_pipeline(tiny_model_dir(), torch.float32, torch.float32)
    pipe.set_progress_bar_config(disable=True)
    apply_levers(pipe, "cpu", attention_backend=None, graphs=False)
    return pipe


def _image(pipe: Any) -> Any:
    return pipe(prompt="a red cat", height=64, width=64, num_inference_steps=2, guidance_scale=0.0,
                generator=torch.Generator("cpu").manual_seed(3), output_type="np").images[0]


def test_group_hooks_stream_the_transformer_and_encoder_and_keep_the_image() -> None:
    from zitops.engine.precision.offload import levers_before_placement, place

    assert levers_before_placement("group") and not levers_before_placement("model")
    plain = _image(_pipeline())
    pipe = _pipeline()  # levers first: group offload records the fused projections' weights
    place(pipe, "group", "cpu", settings(offload="group", offload_stream=False, offload_group_blocks=2))
    assert describe(pipe) == {"transformer": "group", "text_encoder": "group", "vae": "cpu"}
    assert str(pipe._execution_device) == "cpu"
    assert abs(_image(pipe) - plain).max() == 0.0


def test_text_encoder_offload_streams_only_the_encoder_and_keeps_the_image() -> None:
    from zitops.engine.precision.offload import HOST_COMPONENTS, levers_before_placement, place

    assert levers_before_placement("text_encoder") and HOST_COMPONENTS["text_encoder"] == ("text_encoder",)
    plain = _image(_pipeline())
    pipe = _pipeline()
    placed = place(pipe, "text_encoder", "cpu", settings(offload="text_encoder", offload_stream=False))
    assert describe(pipe) == {"transformer": "cpu", "text_encoder": "group", "vae": "cpu"}
    assert placed["offload_group"]["components"] == ["text_encoder"]
    assert abs(_image(pipe) - plain).max() == 0.0


def test_a_stream_needs_cuda() -> None:
    from zitops.engine.precision.offload import place

    with pytest.raises(EngineError, match="engine.offload_stream needs a CUDA device, not cpu"):
        place(_pipeline(), "group", "cpu", settings(offload="group"))


@pytest.mark.parametrize("offload", ["group", "text_encoder"])
def test_group_hooks_carry_fp8_layers_and_keep_the_fp8_image(offload: str) -> None:
    from zitops.engine.precision import fp8
    from zitops.engine.precision.offload import HOST_COMPONENTS, place
    from zitops.profile import FP8_KEEP_BF16

    def quantized() -> Any:
        pipe = _pipeline()
        fp8.quantize_pipeline(pipe, "weight_only", FP8_KEEP_BF16, "cpu", park=HOST_COMPONENTS[offload])
        return pipe

    plain = _image(quantized())
    pipe = quantized()
    place(pipe, offload, "cpu", settings(offload=offload, offload_stream=False))
    layout = describe(pipe)
    assert all(layout[c] == "group" for c in HOST_COMPONENTS[offload])
    # The group hooks wrap the fp8 layers (buffers, not parameters) and the image is the same. On the
    # CPU the onload is to the CPU too: whether the buffers reach the GPU is the GPU lane's to show.
    assert abs(_image(pipe) - plain).max() == 0.0
