"""Attention plans for the caption lengths real prompts have, built in the warm-up rather than in a request.

Measured on one H100 (2026-12-07, ``benchmarks/device.sh first-trace``,
docs/gpu-lane/2026-12-07-h100.md): after the warm-up, the first in-process
request at the profile's size took 0.934 s against 0.835 s for the second.
Of the 99 ms, 80 ms were two calls of ``aten::_cudnn_attention_forward``
(40 ms each, CPU side): the context refiner's attention and the first
unified block's, at a caption length the warm-up prompt never had (a
23-token prompt pads to 32 tokens; the warm-up prompt's 46 pad to 64).
cuDNN builds an execution plan per attention shape, and the shape of both
depends on the caption's padded length (Z-Image pads it to a multiple of
32). Every new (batch, image size, caption length) pays once per process.

So the warm-up runs the transformer once, at the profile's batch and size,
for each caption length in :data:`CAPTION_LENGTHS`: the prompts of most
requests (up to 128 tokens with the chat template). One forward at 1024²
is about a tenth of an image (arithmetic from 8 steps at 0.86 s). Longer
prompts still pay their plan in their first request. Zeros stand in for
the latents and the caption: a plan depends on shapes, not values.
"""

from __future__ import annotations

from typing import Any

from zitops.engine.precision.compile_bundle import graphs_so_far

CAPTION_LENGTHS = (32, 64, 96, 128)
"""Padded caption lengths (tokens, multiples of 32) whose attention plans the warm-up builds."""


def warm_attention_plans(pipe: Any, device: str, shapes: list[tuple[int, int, int]],
                         lengths: tuple[int, ...] = CAPTION_LENGTHS) -> dict[str, Any]:
    """One transformer forward per (batch, width, height) in ``shapes`` and caption length.

    Returns ``{"shapes": ["BxWxH@N", ...], "new_graphs": n}``: ``new_graphs``
    counts what dynamo compiled meanwhile, which must be 0 (the forwards run
    as the pipeline runs them, under ``no_grad``; under ``inference_mode``
    they compiled two more graphs on the CPU), None without dynamo. No shapes
    when the pipeline has no Z-Image transformer to call this way.
    """
    import torch

    transformer: Any = getattr(pipe, "transformer", None)
    config = getattr(transformer, "config", None)
    cap_dim, channels = getattr(config, "cap_feat_dim", None), getattr(config, "in_channels", None)
    if cap_dim is None or channels is None:
        return {"shapes": [], "new_graphs": None}
    before = graphs_so_far()
    # The pipeline's latent side: 2 * (side // (vae_scale_factor * 2)).
    scale = int(getattr(pipe, "vae_scale_factor", 8)) * 2
    dtype = transformer.dtype
    done = []
    with torch.no_grad():  # as the pipeline runs it: inference_mode would be a new graph for dynamo
        for batch, width, height in shapes:
            latents = [torch.zeros(channels, 1, 2 * (height // scale), 2 * (width // scale), dtype=dtype,
                                   device=device) for _ in range(batch)]
            t = torch.full((batch,), 0.5, device=device)
            for n in lengths:
                captions = [torch.zeros(n, cap_dim, dtype=dtype, device=device) for _ in range(batch)]
                transformer(latents, t, captions, return_dict=False)
                done.append(f"{batch}x{width}x{height}@{n}")
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    after = graphs_so_far()
    return {"shapes": done, "new_graphs": None if after is None else after - (before or 0)}
