"""Fused projections and zitops' attention processor, checked against diffusers' own on the tiny model."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.engine_support import tiny_model_dir
from zitops.engine.precision import accel, attention


@pytest.fixture(scope="module")
def pipe() -> Any:
    import torch

    from zitops.engine.loader import load_pipeline

    return load_pipeline(tiny_model_dir(), torch.float32, torch.float32)


def _inputs(pipe: Any, batch: int = 1, seq_lens: tuple[int, ...] = (7,)) -> tuple[list[Any], Any, list[Any]]:
    import torch

    g = torch.Generator().manual_seed(0)
    cfg = pipe.transformer.config
    latents = [torch.randn(cfg.in_channels, 1, 4, 4, generator=g) for _ in range(batch)]
    caps = [torch.randn(seq_lens[i % len(seq_lens)], cfg.cap_feat_dim, generator=g) for i in range(batch)]
    return latents, torch.full((batch,), 0.3), caps


def _forward(transformer: Any, inputs: tuple[list[Any], Any, list[Any]]) -> list[Any]:
    import torch

    with torch.no_grad():
        return list(transformer(*inputs, return_dict=False)[0])


@pytest.mark.parametrize("seq_lens", [(7,), (7, 40)], ids=["unmasked", "masked-batch"])
def test_fused_transformer_matches_diffusers(pipe: Any, seq_lens: tuple[int, ...]) -> None:
    import torch

    inputs = _inputs(pipe, batch=len(seq_lens), seq_lens=seq_lens)
    reference = _forward(pipe.transformer, inputs)
    fused = copy.deepcopy(pipe.transformer)
    counts = attention.fuse_projections(fused)
    blocks = sum(1 for m in fused.modules() if type(m).__name__ == "ZImageTransformerBlock")
    assert counts == {"qkv": blocks, "ffn": blocks} and blocks > 0
    assert attention.install_processor(fused, None) == blocks
    out = _forward(fused, inputs)
    for a, b in zip(reference, out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fusion_drops_the_separate_weights(pipe: Any) -> None:
    fused = copy.deepcopy(pipe.transformer)
    before = sum(p.numel() for p in fused.parameters())
    counts = attention.fuse_projections(fused)
    assert sum(p.numel() for p in fused.parameters()) == before
    block = next(m for m in fused.modules() if type(m).__name__ == "ZImageTransformerBlock")
    assert not hasattr(block.attention, "to_q") and not hasattr(block.feed_forward, "w1")
    # Idempotent: a second call (the levers after the fp8 step) fuses nothing more and counts the fused blocks.
    assert attention.fuse_projections(fused) == counts and counts["qkv"] > 0
    assert sum(p.numel() for p in fused.parameters()) == before


def test_processor_uses_the_flash_function_only_without_a_mask(pipe: Any) -> None:
    """A stand-in flash function (SDPA in FlashAttention's layout) is called for unmasked batches only."""
    import torch
    import torch.nn.functional as F

    calls: list[tuple[int, ...]] = []

    def flash(q: Any, k: Any, v: Any) -> Any:
        calls.append(tuple(q.shape))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2), None  # like flash_attn_func's (out, lse)

    fused = copy.deepcopy(pipe.transformer)
    attention.fuse_projections(fused)
    attention.install_processor(fused, flash)
    for seq_lens in ((7,), (7, 40)):
        inputs = _inputs(pipe, batch=len(seq_lens), seq_lens=seq_lens)
        calls.clear()
        out = _forward(fused, inputs)
        for a, b in zip(_forward(pipe.transformer, inputs), out, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        # Unmasked: every block; masked batch: only the noise refiner (image tokens are equal in length).
        layers = len(fused.layers) + len(fused.noise_refiner) + len(fused.context_refiner)
        assert len(calls) == (layers if len(seq_lens) == 1 else len(fused.noise_refiner))


def test_flash3_is_off_without_cuda() -> None:
    fn, reason = attention.load_flash3("cpu")
    assert fn is None and reason == "needs a CUDA device"


def test_apply_levers_fuses_on_cpu_and_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from zitops.engine.loader import load_pipeline

    fresh = load_pipeline(tiny_model_dir(), torch.float32, torch.float32)
    monkeypatch.setenv(accel.LEVERS_ENV, "-fuse")
    out = accel.apply_levers(fresh, "cpu", attention_backend=None)
    assert "fused_projections" not in out and "flash_attention_3" not in out
    monkeypatch.setenv(accel.LEVERS_ENV, "")
    out = accel.apply_levers(fresh, "cpu", attention_backend=None)
    assert out["fused_projections"]["qkv"] > 0 and "attention_backend" not in out


def test_device_postprocess_matches_diffusers(pipe: Any) -> None:
    import numpy as np
    import torch

    from zitops.engine.decoding import _to_pil

    image = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(3)) * 1.2
    ours = _to_pil(image)
    theirs = pipe.image_processor.postprocess(image, output_type="pil")
    assert [im.size for im in ours] == [(24, 16)] * 2
    for a, b in zip(ours, theirs, strict=True):
        assert a.mode == b.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b))


def test_device_postprocess_hands_pillow_contiguous_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pixels reach Pillow in row order: a strided array costs a CPU gather first (4.2 against
    0.4 ms at 1024x1024 on the dev box, benchmarks/results/cpu-2026-12-08-to-pil.json), and that is
    engine time every request pays."""
    import torch
    from PIL import Image

    from zitops.engine.decoding import _to_pil

    seen: list[Any] = []
    real = Image.fromarray

    def spy(array: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(array)
        return real(array, *args, **kwargs)

    monkeypatch.setattr(Image, "fromarray", spy)
    images = _to_pil(torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(3)))
    assert [im.size for im in images] == [(24, 16)] * 2
    assert len(seen) == 2 and all(a.flags["C_CONTIGUOUS"] and a.shape == (16, 24, 3) for a in seen)
