"""Write a random AutoencoderTiny of TAEF1's shape (16 latent channels) for ``engine.tiny_vae_path``.

``vae_decode: fast`` (the ecommerce profile) decodes with TAEF1; real TAEF1
weights can't be downloaded here, and a decoder's speed depends on its shape,
not its values, so the GPU benchmarks time a random one. TAEF1 is diffusers'
``AutoencoderTiny`` with its default block layout and 16 latent channels
(madebyollin/taef1's config). Its images are noise: timings only.

    python3 benchmarks/taef1.py DIR
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from diffusers import AutoencoderTiny

TAEF1: dict[str, int] = {"latent_channels": 16}
"""What TAEF1 changes from AutoencoderTiny's defaults (64-channel blocks, 1/3/3/3 encoder, 3/3/3/1 decoder)."""


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python3 benchmarks/taef1.py DIR")
    torch.manual_seed(0)
    tae: Any = AutoencoderTiny(**TAEF1)
    tae.save_pretrained(sys.argv[1], safe_serialization=True)
    print(sys.argv[1])


if __name__ == "__main__":
    main()
