"""fp8 on the CPU with the tiny model: which layers are swapped, which kept, and the weight-only image.

The weight-only mode is the real swap on the CPU (e4m3 storage, matmuls in the
activation dtype), so these tests exercise the same modules a pre-Ada GPU runs.
fp8 GEMMs (``torch._scaled_mm``) need an Ada/Hopper GPU: tests/gpu/test_gpu_fp8.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import settings, tiny_model_dir
from zitops.engine.precision import fp8
from zitops.errors import ProfileError
from zitops.profile import FP8_KEEP_BF16, load_profile

torch = pytest.importorskip("torch")

WEIGHT_ONLY_MIN_PSNR_DB = 30.0
"""The bound for the tiny pipeline, weight-only against fp32 on the same seed. e4m3 rounds each weight
to 3 mantissa bits (at most 2^-4 relative error, per-row scaled), so every swapped layer's output moves
by a few percent at most; the tiny model measured 46-47 dB. 30 dB is the figure the GPU lane states for
fp8 on the full architecture, and the test also asserts the images differ, so a swap that did nothing fails."""


@pytest.fixture(scope="module")
def pipe() -> Any:
    from zitops.engine.loader import load_pipeline

    return load_pipeline(tiny_model_dir(), torch.float32, torch.float32)


def _kinds(pipe: Any) -> dict[str, str]:
    """Every linear-like module of the transformer and the text encoder, by qualified name: its class name."""
    names = {"Linear", "Fp8Linear", "Fp8WeightOnlyLinear"}
    return {f"{part}.{n}": type(m).__name__ for part in fp8.COMPONENTS
            for n, m in getattr(pipe, part).named_modules() if type(m).__name__ in names}


@pytest.mark.parametrize("mode", ["weight_only", "gemm"])
def test_the_default_keep_list_swaps_the_right_layers(pipe: Any, mode: str) -> None:
    quantized = copy.deepcopy(pipe)
    info = fp8.quantize_pipeline(quantized, mode, FP8_KEEP_BF16, "cpu")
    kinds = _kinds(quantized)
    cls = fp8.linear_class(mode).__name__
    # The tiny transformer has two main blocks: the first and the last are both kept.
    for kept in ("transformer.all_x_embedder.2-1", "transformer.t_embedder.mlp.0", "transformer.cap_embedder.1",
                 "transformer.all_final_layer.2-1.linear", "transformer.layers.0.attention.to_q",
                 "transformer.layers.1.feed_forward.w2", "transformer.noise_refiner.0.adaLN_modulation.0"):
        assert kinds[kept] == "Linear", kept
    for swapped in ("transformer.noise_refiner.0.attention.to_q", "transformer.context_refiner.0.attention.to_out.0",
                    "text_encoder.layers.0.self_attn.q_proj", "text_encoder.layers.1.mlp.down_proj"):
        assert kinds[swapped] == cls, swapped
    assert info["mode"] == mode and sum(info["linears"].values()) == sum(k == cls for k in kinds.values())
    assert info["linears"]["text_encoder"] == 14  # 2 layers x (q, k, v, o, gate, up, down)
    if mode == "gemm":
        # The refiners' feed-forward (64 -> 170) has sides that are not multiples of 16: no fp8 GEMM for it.
        assert kinds["transformer.noise_refiner.0.feed_forward.w1"] == "Linear" and info["unaligned_kept"] > 0
    else:
        assert kinds["transformer.noise_refiner.0.feed_forward.w1"] == cls
    layer = quantized.text_encoder.layers[0].self_attn.q_proj
    assert layer.weight_fp8.dtype == torch.float8_e4m3fn and not hasattr(layer, "weight")


def test_a_custom_keep_list_with_a_negative_index_keeps_exactly_those(pipe: Any) -> None:
    quantized = copy.deepcopy(pipe)
    fp8.quantize_pipeline(quantized, "weight_only", ("text_encoder.layers.-1", "transformer"), "cpu")
    kinds = _kinds(quantized)
    assert {k for k, v in kinds.items() if v == "Linear"} == {
        k for k in kinds if k.startswith(("transformer.", "text_encoder.layers.1."))}
    assert kinds["text_encoder.layers.0.mlp.up_proj"] == "Fp8WeightOnlyLinear"


def test_a_keep_pattern_matching_nothing_is_refused_naming_it(pipe: Any) -> None:
    with pytest.raises(ProfileError, match=r"engine.fp8_keep_bf16: 'transformer.layerz.0' matches no linear"):
        fp8.plan_swaps(pipe, ("transformer.layers.0", "transformer.layerz.0"))
    with pytest.raises(ProfileError, match=r"engine.fp8_keep_bf16: .*not a layer name"):
        load_profile("lowvram", ["engine.fp8_keep_bf16=transformer.layers.0,vae decoder"])


def test_the_lowvram_profile_loads_with_fp8_resident() -> None:
    profile = load_profile("lowvram")
    e = profile.engine
    assert (e.fp8, e.offload, e.fp8_keep_bf16) == (True, "none", FP8_KEEP_BF16)
    assert load_profile("lowvram", ["engine.fp8=weight_only"]).engine.fp8 == "weight_only"
    assert load_profile("designer", ["engine.fp8=true"]).engine.fp8 is True
    with pytest.raises(ProfileError, match="engine.fp8"):
        load_profile("lowvram", ["engine.fp8=int4"])
    assert load_profile("lowvram", ["engine.fp8_keep_bf16=transformer.layers.0, text_encoder"]).engine \
        .fp8_keep_bf16 == ("transformer.layers.0", "text_encoder")


def test_fp8_true_on_the_cpu_generates_weight_only_within_the_bound_of_fp32(tmp_path: Path) -> None:
    from zitops.engine.diffusers_engine import DiffusersEngine
    from zitops.engine.request import GenerationRequest

    request = GenerationRequest(prompt="a red fox in snow", seeds=(3,), width=64, height=64, steps=2,
                                sampler="euler")
    images = {}
    for setting in (False, True):
        engine = DiffusersEngine(settings(fp8=setting), str(tiny_model_dir()), state_dir=tmp_path)
        engine.setup("cpu")
        images[setting] = engine.generate(request).images[0]
        if setting:
            assert engine.effective["fp8"]["mode"] == "weight_only"
            assert engine.effective["fp8_linears"] == sum(engine.effective["fp8"]["linears"].values()) > 0
            assert any("weight-only" in note for note in engine.notes)
            assert sum(isinstance(m, fp8.linear_class("weight_only"))
                       for m in engine.pipe.text_encoder.modules()) == 14
    from zitops.bench.measure import compare_images

    deviation = compare_images(images[False], images[True])
    assert WEIGHT_ONLY_MIN_PSNR_DB <= deviation["psnr_db"] < 999.0, deviation
    assert 0 < deviation["max_abs"] <= 0.25, deviation


def test_fp8_auto_on_the_cpu_leaves_the_layers_alone_and_generates_the_bf16_image(tmp_path: Path) -> None:
    from zitops.engine.diffusers_engine import DiffusersEngine
    from zitops.engine.request import GenerationRequest

    assert load_profile("ecommerce").engine.fp8 == "auto"
    assert fp8.resolve_mode("auto", "cpu") is None and fp8.resolve_mode(True, "cpu") == "weight_only"
    request = GenerationRequest(prompt="a red fox in snow", seeds=(3,), width=64, height=64, steps=2,
                                sampler="euler")
    images = {}
    for setting in (False, "auto"):
        engine = DiffusersEngine(settings(fp8=setting), str(tiny_model_dir()), state_dir=tmp_path)
        engine.setup("cpu")
        images[setting] = engine.generate(request).images[0]
        assert "fp8" not in engine.effective
        assert not any(isinstance(m, (fp8.linear_class("gemm"), fp8.linear_class("weight_only")))
                       for m in engine.pipe.transformer.modules())
    assert images[False].tobytes() == images["auto"].tobytes()


def test_fast_accumulation_is_on_unless_the_lever_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZITOPS_ACCEL", raising=False)
    assert fp8.fast_accum() is True
    monkeypatch.setenv("ZITOPS_ACCEL", "-fp8fastacc")
    assert fp8.fast_accum() is False
