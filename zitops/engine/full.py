"""``--arch full``: the real-size Z-Image-Turbo architecture with random weights.

For benchmarks where the weights can't be had: speed and memory depend on
shapes, not values. Everything is created directly on the target device in the
target dtype (no fp32 copy, no 20 GB written to disk). Only the small
tokenizer is cached on disk, so a restart skips training it. Imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zitops.engine.phases import phase

# The model facts in ../shared/seed/NOTES.md and the issue.
FULL_TRANSFORMER: dict[str, Any] = dict(
    all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
    n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560,
    rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
)
FULL_TEXT_ENCODER: dict[str, Any] = dict(  # Qwen3-4B's shape
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
    rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
)
FULL_VAE: dict[str, Any] = dict(  # the 16-channel FLUX autoencoder
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16,
    norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
    use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
)
INIT_STD = 0.02


@contextlib.contextmanager
def _default_dtype(dtype: Any) -> Iterator[None]:
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _reinit(module: Any, seed: int) -> None:
    """Small normal weights, so 30 random layers stay finite in bf16."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim >= 2 and p.device.type != "meta":
                p.normal_(0.0, INIT_STD)


def build_transformer(device: Any, dtype: Any) -> Any:
    """ZImageTransformer2DModel at full size, parameters created on ``device`` in ``dtype``."""
    import torch
    from diffusers import ZImageTransformer2DModel

    with torch.device(device), _default_dtype(dtype):
        model: Any = ZImageTransformer2DModel(**FULL_TRANSFORMER)
    _reinit(model, 0)
    if model.x_pad_token.device.type != "meta":
        with torch.no_grad():
            model.x_pad_token.normal_(0.0, INIT_STD)
            model.cap_pad_token.normal_(0.0, INIT_STD)
    return model.eval()


def build_text_encoder(device: Any, dtype: Any) -> Any:
    """A Qwen3-4B-shaped Qwen3Model on ``device`` in ``dtype``."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    with torch.device(device), _default_dtype(dtype):
        model: Any = Qwen3Model(Qwen3Config(**FULL_TEXT_ENCODER))
    _reinit(model, 1)
    return model.eval()


def build_vae(device: Any, dtype: Any) -> Any:
    """The FLUX-shaped 16-channel AutoencoderKL on ``device`` in ``dtype``."""
    import torch
    from diffusers import AutoencoderKL

    # The VAE keeps diffusers' own init; a fixed seed makes it the same in every
    # process, so a benchmark's baseline, engine and agent share all weights.
    torch.manual_seed(2)
    with torch.device(device), _default_dtype(dtype):
        vae: Any = AutoencoderKL(**FULL_VAE)
    return vae.eval()


def count_parameters(module: Any) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


def _tokenizer_key() -> str:
    """Changes whenever what ``train_tokenizer`` would produce changes."""
    import transformers

    from zitops.engine import tiny

    text = repr((tiny._CORPUS, tiny.SPECIAL_TOKENS, tiny.CHAT_TEMPLATE, transformers.__version__))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def cached_tokenizer(cache_dir: str | Path | None = None) -> Any:
    """The bench's tokenizer, trained once and kept under ``<cache_dir>/tokenizers``; a restart loads it."""
    from transformers import Qwen2Tokenizer

    from zitops.engine.loader import default_state_dir
    from zitops.engine.tiny import train_tokenizer

    root = Path(cache_dir) if cache_dir is not None else default_state_dir() / "cache"
    target = root / "tokenizers" / f"full-random-{_tokenizer_key()}"
    if (target / "tokenizer.json").is_file():
        try:
            return Qwen2Tokenizer.from_pretrained(str(target), local_files_only=True)
        except (OSError, ValueError):  # a damaged cache is rebuilt below
            pass
    tokenizer = train_tokenizer()
    with contextlib.suppress(OSError):  # a read-only cache only costs the training next time
        _save(tokenizer, target)
    return tokenizer


def _save(tokenizer: Any, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=target.parent))
    try:
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)  # readers see the whole tokenizer or none
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_full_pipeline(device: str, dtype: Any, vae_dtype: Any, *, cache_dir: str | Path | None = None) -> Any:
    """A full-size ZImagePipeline with random weights, built on ``device``; only the tokenizer is cached on disk."""
    from diffusers import ZImagePipeline

    from zitops.engine.schedulers import make_scheduler
    from zitops.engine.tiny import SCHEDULER

    with phase("build"):
        # The tokenizer only decides token ids; the tiny one is enough for timing.
        tokenizer = cached_tokenizer(cache_dir)
        pipe: Any = ZImagePipeline(
            scheduler=make_scheduler(SCHEDULER, "euler"),
            vae=build_vae(device, vae_dtype),
            text_encoder=build_text_encoder(device, dtype),
            tokenizer=tokenizer,
            transformer=build_transformer(device, dtype),
        )
        pipe.set_progress_bar_config(disable=True)
    return pipe
