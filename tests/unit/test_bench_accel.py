"""Speed levers that can be checked on the CPU with the tiny pipeline."""

from __future__ import annotations

from typing import Any

import pytest

from tests.engine_support import tiny_model_dir
from zitops.engine.precision import accel


@pytest.fixture(scope="module")
def pipe() -> Any:
    import torch

    from zitops.engine.loader import load_pipeline

    return load_pipeline(tiny_model_dir(), torch.float32, torch.float32)


def test_short_padding_gives_the_same_embeddings_as_512_tokens(pipe: Any) -> None:
    import torch

    prompts = ["a cat", "a very long prompt about a red fox sitting in fresh snow at sunrise, soft light"]
    with torch.no_grad():
        full = pipe._encode_prompt(list(prompts), "cpu")
        short = accel._encode_prompt_longest(pipe, list(prompts), "cpu")
    assert [e.shape for e in full] == [e.shape for e in short]
    assert full[0].shape[0] < full[1].shape[0]
    for a, b in zip(full, short, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_short_padding_encodes_far_fewer_tokens(pipe: Any) -> None:
    seen: list[int] = []
    original = pipe.text_encoder.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(int(kwargs["input_ids"].shape[1]))
        return original(*args, **kwargs)

    pipe.text_encoder.forward = spy
    try:
        import torch

        with torch.no_grad():
            pipe._encode_prompt("a cat", "cpu")
            accel._encode_prompt_longest(pipe, "a cat", "cpu")
    finally:
        del pipe.text_encoder.forward
    assert seen[0] == 512 and seen[1] < 64


def test_levers_can_be_switched_off(pipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(accel.LEVERS_ENV, "-textpad,+fp8")
    assert accel.disabled_levers() == {"textpad"} and accel.enabled_levers() == {"fp8"}
    out = accel.apply_levers(pipe, "cpu", attention_backend=None)
    assert out["text_padding"] == "512" and "attention_backend" not in out
    monkeypatch.setenv(accel.LEVERS_ENV, "")
    assert accel.apply_levers(pipe, "cpu", attention_backend=None)["text_padding"] == "longest"


def test_unmasked_bucketed_encoder_gives_the_same_embeddings(pipe: Any) -> None:
    """The CUDA-graph path's arithmetic (no padding mask, power-of-two buckets) run eagerly on the CPU."""
    import torch

    prompts = ["a cat", "a very long prompt about a red fox sitting in fresh snow at sunrise, soft light"]
    runner = accel.TextEncoderRunner(pipe.text_encoder, "cpu", graphs=False)
    seen: list[int] = []
    original = runner._run
    def counted(ids: Any) -> Any:
        seen.append(int(ids.shape[1]))
        return original(ids)

    runner._run = counted  # type: ignore[method-assign]
    with torch.no_grad():
        full = pipe._encode_prompt(list(prompts), "cpu")
        pipe._zitops_text_runner = runner
        try:
            bucketed = accel._encode_prompt_longest(pipe, list(prompts), "cpu")
        finally:
            del pipe._zitops_text_runner
    assert seen and seen[0] in (32, 64, 128) and seen[0] >= max(e.shape[0] for e in full)
    for a, b in zip(full, bucketed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert [runner.bucket(n, 512) for n in (1, 32, 33, 300, 600)] == [32, 32, 64, 512, 600]
