"""The GPU lane: every test here needs CUDA, and is skipped, saying so, where there is none.

Each module marks itself ``gpu``: ``-m gpu`` picks the lane, ``-m 'not gpu'`` leaves it out.

Run it on a GPU host with ``python3 -m pytest -o addopts=-ra -m gpu tests/gpu -v`` (docs/gpu-lane/README.md).
"""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=1)
def _no_cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "the GPU lane needs torch with CUDA; torch is not installed"
    if not torch.cuda.is_available():
        return (f"the GPU lane needs a CUDA GPU; torch {torch.__version__} sees none "
                "(torch.cuda.is_available() is False)")
    return None


@pytest.fixture(scope="session", autouse=True)
def _needs_cuda() -> None:
    """Session scope: it runs before any module fixture of the lane builds an engine on the GPU."""
    reason = _no_cuda_reason()
    if reason is not None:
        pytest.skip(reason)
