"""A tiny Z-Image pipeline with the real architecture and on-disk format.

Random weights, a few MB, built offline in seconds: the embedded default for
demos and tests. Its images are noise, and the marker file written next to
``model_index.json`` lets every surface say so. Imports torch lazily.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zitops.progress import Progress

TINY_MARKER = "ZITOPS_TINY_MODEL.txt"
TINY_NOTICE = "tiny random model: images are noise"

# A small bilingual corpus: the tokenizer only has to cover prompts well enough
# to produce stable ids; the weights are random anyway.
_CORPUS = [
    "a photo of a cat sitting on a red chair, studio lighting, high detail",
    "an e-commerce product shot of white sneakers on a grey background",
    "a poster with the text 'GRAND OPENING' in bold letters, neon colours",
    "a watercolor painting of mountains at sunrise, soft pastel tones",
    "portrait of an old fisherman, dramatic light, 85mm lens, film grain",
    "一幅为名为“造相”的项目设计的创意海报，画面清晰，文字正确",
    "春天的花园里有一只小猫，阳光明媚，高清摄影",
    "中文海报：新品上市，限时优惠，红色背景，金色文字",
    "the quick brown fox jumps over the lazy dog 0123456789",
    "<think> </think> user assistant system",
]

# Qwen3's chat template, trimmed to what ZImagePipeline uses: user turns and a
# generation prompt, with the empty think block when thinking is disabled.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

TINY_TRANSFORMER: dict[str, Any] = dict(
    all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2,
    n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=32,
    rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 12, 12], axes_lens=[1536, 512, 512],
)
TINY_TEXT_ENCODER: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=False,
)
# Four blocks, as in the FLUX VAE, so the latent is 1/8 of the image and
# sides must be multiples of 16 exactly as with the real model.
TINY_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 8, 16, 16], layers_per_block=1, latent_channels=16, norm_num_groups=8,
    sample_size=32, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
    use_post_quant_conv=False, force_upcast=True,
)
# A TAEF1-shaped tiny autoencoder (16 latent channels, 8x upsampling), for
# exercising vae_decode=fast without downloading madebyollin/taef1.
TINY_TAE: dict[str, Any] = dict(
    latent_channels=16, encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
)
TINY_VAE_DIR = "tiny_vae"
SCHEDULER: dict[str, Any] = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


def train_tokenizer(vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer trained on the built-in corpus, Qwen-style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    kwargs: dict[str, Any] = dict(bos_token=None, unk_token=None)
    return Qwen2Tokenizer(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", **kwargs, chat_template=CHAT_TEMPLATE,
        model_max_length=131072, padding_side="right",
    )


def _fill_pad_tokens(transformer: Any) -> None:
    """The pad tokens are created with torch.empty; random garbage can be NaN."""
    import torch

    with torch.no_grad():
        transformer.x_pad_token.normal_(0.0, 0.02)
        transformer.cap_pad_token.normal_(0.0, 0.02)


def build_tiny_pipeline(seed: int = 0) -> Any:
    """The tiny ZImagePipeline in memory (fp32, CPU)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = train_tokenizer()
    torch.manual_seed(seed)
    transformer: Any = ZImageTransformer2DModel(**TINY_TRANSFORMER)
    _fill_pad_tokens(transformer)
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), **TINY_TEXT_ENCODER))
    vae = AutoencoderKL(**TINY_VAE)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    return ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        transformer=transformer,
    )


def make_tiny_vae(directory: str | Path, seed: int = 0) -> Path:
    """Write a random TAEF1-shaped AutoencoderTiny (for ``engine.tiny_vae_path``)."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    out = Path(directory)
    tae: Any = AutoencoderTiny(**TINY_TAE)
    tae.save_pretrained(out, safe_serialization=True)
    return out


def is_tiny(path: str | Path) -> bool:
    """True when ``path`` is a pipeline written by :func:`make_tiny`."""
    return (Path(path) / TINY_MARKER).is_file()


def make_tiny(directory: str | Path, seed: int = 0, progress: Progress | None = None) -> Path:
    """Write the tiny pipeline to ``directory`` (diffusers format) and mark it; ``progress`` sees 3 steps."""
    from zitops.engine.offline import quiet_libraries

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress.phase("writing the tiny model", total=3)  # the path comes in the last line
        progress.state("building the random weights")
    pipe = build_tiny_pipeline(seed)
    quiet_libraries()
    if progress is not None:
        progress.advance()
        progress.state("saving the pipeline")
    pipe.save_pretrained(out, safe_serialization=True)
    if progress is not None:
        progress.advance()
        progress.state("writing the tiny VAE")
    make_tiny_vae(out / TINY_VAE_DIR, seed)
    if progress is not None:
        progress.advance()
    (out / TINY_MARKER).write_text(
        f"{TINY_NOTICE}.\nBuilt by `zitops model make-tiny` (seed {seed}): the real Z-Image "
        "architecture at toy size with random weights, for demos and tests.\n"
        f"{TINY_VAE_DIR}/ holds a matching random AutoencoderTiny for engine.tiny_vae_path.\n",
        encoding="utf-8",
    )
    index = json.loads((out / "model_index.json").read_text("utf-8"))
    index["_zitops_tiny"] = True
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    if progress is not None:
        progress.close()
    return out
