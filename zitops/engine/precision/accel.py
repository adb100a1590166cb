"""Speed levers for the diffusers engine: what makes a Z-Image-Turbo image cheaper on a GPU.

The engine calls :func:`apply_levers` once after loading and
:func:`compile_pipeline` when ``engine.compile`` is on. Every lever here
keeps the output within bf16 tolerance of the eager pipeline. Imports torch
only inside functions (the engine runs in the worker process).

Levers, and why:

- **Short text padding.** ZImagePipeline pads every prompt to 512 tokens and
  runs the 4 B text encoder over all of them, then throws the padding away.
  Padding to the longest prompt in the batch gives the same embeddings for
  the real tokens (right padding under a causal mask), for a fraction of the work.
- **Regional compile** of the repeated transformer block (one compiled block
  reused by the 30 layers and the refiners), with inductor's persistent
  caches under the engine's cache directory so a restarted worker reloads
  compiled code instead of compiling again.
- **Compiled VAE decoder** (with the transformer when ``engine.compile`` is
  on): 85 ms to 36 ms per 1024x1024 decode on an H200.
- **Fused projections** (q/k/v in one matmul, the feed-forward's gate and up
  in one): fewer, larger GEMMs (:mod:`zitops.engine.precision.attention`).
- **FlashAttention-3** on Hopper when a package provides it (the official
  hopper build or the forward-only ``fa3-fwd`` wheel), through zitops' own
  attention processor; otherwise diffusers' dispatcher, where PyTorch's own
  SDPA measured best (:data:`AUTO_BACKENDS`, ``benchmarks/levers.py``).
- **Text encoder in CUDA graphs** (CUDA, no offload): a short prompt through
  the 4 B encoder is ~500 small kernels whose launches, not the GPU, set its
  time (26 ms on an H200). Prompts are padded to a power-of-two bucket and
  each (prompts, bucket) shape is captured once and replayed.
- **cuDNN autotuning** for the VAE's convolutions, during the warm-up only;
  after it (``DiffusersEngine.after_warmup``) autotuning is off, so a new
  image size uses cuDNN's heuristics instead of benchmarking every
  convolution inside its first request (0.76 s at 1152x896 on an H200).

fp8 (``engine.fp8``) is not a lever here but its own step before the
pipeline moves to the GPU (:mod:`zitops.engine.precision.fp8`).
"""

from __future__ import annotations

import logging
import os
import types
from typing import Any

log = logging.getLogger("zitops.engine")

AUTO_BACKENDS = ("_flash_3", "native")
"""Tried in this order when the profile names no attention backend (CUDA only).

Measured on an H200 (torch 2.11, one 1024x1024 forward, eager): PyTorch's own
SDPA 144.9 ms, cuDNN 150.6, SDPA-flash 156.6, SDPA-efficient 180.0, so after
FlashAttention-3 (when its package is installed) the default SDPA dispatch wins.
"""

LEVERS_ENV = "ZITOPS_ACCEL"
"""Comma list to turn levers off for an A/B run, e.g. ``ZITOPS_ACCEL=-textpad,-attn``."""


def disabled_levers() -> set[str]:
    """Levers switched off through $ZITOPS_ACCEL (``-name`` entries)."""
    raw = os.environ.get(LEVERS_ENV, "")
    return {part.strip()[1:] for part in raw.split(",") if part.strip().startswith("-")}


def enabled_levers() -> set[str]:
    """Opt-in levers switched on through $ZITOPS_ACCEL (``+name`` entries), e.g. ``+fp8`` (engine.fp8: true)."""
    raw = os.environ.get(LEVERS_ENV, "")
    return {part.strip()[1:] for part in raw.split(",") if part.strip().startswith("+")}


# -- short text padding --------------------------------------------------------
def _encode_prompt_longest(self: Any, prompt: str | list[str], device: Any = None,
                           prompt_embeds: list[Any] | None = None,
                           max_sequence_length: int = 512) -> list[Any]:
    """ZImagePipeline._encode_prompt, padding to the longest prompt instead of 512 tokens."""
    device = device or self._execution_device
    if prompt_embeds is not None:
        return prompt_embeds
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                add_generation_prompt=True, enable_thinking=True)
             for p in prompts]
    inputs = self.tokenizer(texts, padding="longest", max_length=max_sequence_length, truncation=True,
                            return_tensors="pt", padding_side="right")
    cpu_masks = inputs.attention_mask.bool()
    # Slicing by lengths known on the host avoids a boolean-index device sync.
    lengths = [int(n) for n in cpu_masks.sum(dim=1)]
    runner = getattr(self, "_zitops_text_runner", None)
    if runner is not None:
        hidden = runner(inputs.input_ids, max_sequence_length)
        # Replays overwrite the runner's output buffer: the embeddings must own their memory.
        return [hidden[i, :n].clone() for i, n in enumerate(lengths)]
    hidden = self.text_encoder(input_ids=inputs.input_ids.to(device), attention_mask=cpu_masks.to(device),
                               output_hidden_states=True).hidden_states[-2]
    return [hidden[i, :n] for i, n in enumerate(lengths)]


class TextEncoderRunner:
    """The text encoder at power-of-two padded lengths, without a mask, in CUDA graphs when asked.

    Prompts are right-padded and the encoder is causal, so a real token never
    sees the padding: dropping the padding mask leaves the real tokens'
    embeddings unchanged (a unit test checks it) and removes the mask code's
    data-dependent checks, which a CUDA graph cannot contain. One graph per
    (prompts, bucket) shape, at most :attr:`MAX_GRAPHS`; more shapes run eagerly.
    """

    MIN_BUCKET = 32
    MAX_GRAPHS = 12

    def __init__(self, encoder: Any, device: str, *, graphs: bool) -> None:
        self.encoder = encoder
        self.device = device
        self.graphs = graphs
        self._captured: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
        self._pool: Any = None

    def bucket(self, length: int, limit: int) -> int:
        """The padded length for a batch whose longest prompt has ``length`` tokens."""
        size = self.MIN_BUCKET
        while size < length:
            size *= 2
        return max(length, min(size, limit))

    def _run(self, ids: Any) -> Any:
        return self.encoder(input_ids=ids, use_cache=False, output_hidden_states=True).hidden_states[-2]

    def __call__(self, input_ids: Any, limit: int) -> Any:
        """Hidden states (second to last layer) for ``input_ids`` (on the host, right-padded)."""
        import torch

        batch, length = input_ids.shape
        size = self.bucket(length, limit)
        if size > length:
            pad = self.encoder.config.pad_token_id
            pad = 0 if pad is None else int(pad)
            input_ids = torch.cat([input_ids, input_ids.new_full((batch, size - length), pad)], dim=1)
        key = (batch, size)
        if not self.graphs or (key not in self._captured and len(self._captured) >= self.MAX_GRAPHS):
            return self._run(input_ids.to(self.device))
        if key not in self._captured:
            self._captured[key] = self._capture(key)
        static_ids, out, graph = self._captured[key]
        static_ids.copy_(input_ids)
        graph.replay()
        return out

    def capture_buckets(self, prompts: int, limit: int) -> list[tuple[int, int]]:
        """Capture every bucket up to ``limit`` for ``prompts`` prompts now (warm-up), not on first use.

        A prompt longer than any seen so far otherwise paid its capture (two
        eager runs and the capture) inside its request.
        """
        sizes = []
        size = self.MIN_BUCKET
        while size < limit:
            sizes.append(size)
            size *= 2
        sizes.append(limit)
        done = []
        for size in sizes:
            key = (prompts, size)
            if not self.graphs or (key not in self._captured and len(self._captured) >= self.MAX_GRAPHS):
                break
            if key not in self._captured:
                self._captured[key] = self._capture(key)
            done.append(key)
        return done

    def _capture(self, key: tuple[int, int]) -> tuple[Any, Any, Any]:
        import torch

        static_ids = torch.zeros(key, dtype=torch.long, device=self.device)
        # Capture needs warmed-up kernels (cuBLAS handles, lazy inits) run on a side stream.
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._run(static_ids)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._run(static_ids)
        log.info("text encoder captured in a CUDA graph for %d prompt(s) x %d tokens", *key)
        return static_ids, out, graph


def use_short_text_padding(pipe: Any) -> bool:
    """Make ``pipe`` pad prompts to the longest one instead of 512 tokens; False if it can't."""
    if not hasattr(pipe, "_encode_prompt") or getattr(pipe, "tokenizer", None) is None:
        return False
    pipe._encode_prompt = types.MethodType(_encode_prompt_longest, pipe)
    return True


# -- attention -----------------------------------------------------------------
def _backend_usable(transformer: Any, name: str) -> bool:
    try:
        transformer.set_attention_backend(name)
    except (RuntimeError, ValueError, ImportError, OSError, AttributeError):
        return False
    return True


def pick_attention_backend(transformer: Any, candidates: tuple[str, ...] = AUTO_BACKENDS) -> str:
    """Set the first usable backend of ``candidates`` on ``transformer``; returns its name."""
    for name in candidates:
        if _backend_usable(transformer, name):
            return name
    return "default"


def use_fast_attention(pipe: Any, device: str, *, fuse: bool, flash: bool) -> dict[str, Any]:
    """Fuse projections and/or route unmasked attention to FlashAttention-3; returns what was done."""
    from zitops.engine.precision.attention import fuse_projections, install_processor, load_flash3

    out: dict[str, Any] = {}
    fn = None
    if flash:
        fn, source = load_flash3(device)
        out["flash_attention_3"] = source if fn is not None else f"off: {source}"
    if fuse:
        out["fused_projections"] = fuse_projections(pipe.transformer)
    if fuse or fn is not None:
        install_processor(pipe.transformer, fn)
        if fn is not None:
            out["attention_backend"] = "flash3"
    return out


# -- compile -------------------------------------------------------------------
def compile_pipeline(pipe: Any, *, dynamic: bool | None = None, fullgraph: bool = True) -> dict[str, Any]:
    """Regional compile of the repeated transformer blocks, plus the VAE decoder; returns what was done.

    ``dynamic=None`` lets dynamo specialise on the first shape and generalise
    on the second, so a profile's fixed size gets static kernels while other
    sizes still avoid a recompile each. ``fullgraph=False`` for blocks that
    carry context-parallel hooks, which dynamo cannot trace whole (a graph
    break at each block's split, the block itself still compiled).
    """
    import torch

    # Each new image size can add a graph; the default limit of 8 is hit by a
    # busy service that sees many sizes and then silently runs eager.
    torch._dynamo.config.cache_size_limit = max(int(torch._dynamo.config.cache_size_limit), 64)
    pipe.transformer.compile_repeated_blocks(fullgraph=fullgraph, dynamic=dynamic)
    scope = ["transformer_blocks"]
    decoder = getattr(getattr(pipe, "vae", None), "decoder", None)
    if decoder is not None and "vaecompile" not in disabled_levers():
        decoder.compile(dynamic=dynamic)
        scope.append("vae_decoder")
    return {"compile_scope": "+".join(scope)}


# -- entry point -------------------------------------------------------------------
def apply_levers(pipe: Any, device: str, *, attention_backend: str | None,
                 graphs: bool = True) -> dict[str, Any]:
    """Apply the always-safe levers; returns the effective settings for ``describe``."""
    import torch

    off = disabled_levers()
    on_cuda = device.startswith("cuda")
    out: dict[str, Any] = {}
    out["text_padding"] = "longest" if "textpad" not in off and use_short_text_padding(pipe) else "512"
    if out["text_padding"] == "longest" and on_cuda and graphs and "textgraph" not in off:
        # Offloaded encoders move between devices: no graphs there (``graphs=False``).
        pipe._zitops_text_runner = TextEncoderRunner(pipe.text_encoder, device, graphs=True)
        out["text_encoder"] = "cuda_graphs"
    if on_cuda and attention_backend is None and "attn" not in off:
        out["attention_backend"] = pick_attention_backend(pipe.transformer)
    # A backend the profile names is the user's choice: no FlashAttention-3 over it.
    out.update(use_fast_attention(pipe, device, fuse="fuse" not in off,
                                  flash=on_cuda and attention_backend is None and "fa3" not in off))
    if on_cuda and "cudnn" not in off:
        torch.backends.cudnn.benchmark = True
        out["cudnn_benchmark"] = True
    return out


def settle_after_warmup(pipe: Any, device: str, token_limit: int) -> dict[str, Any]:
    """Every text-length bucket up to ``token_limit`` in a CUDA graph, then cuDNN autotuning off.

    Called once the warm-up generations ran (``DiffusersEngine.after_warmup``).
    """
    import torch

    runner = getattr(pipe, "_zitops_text_runner", None)
    # One prompt per encoder call: the pipeline repeats the embeddings per image.
    graphs = runner.capture_buckets(1, token_limit) if runner is not None else []
    if not device.startswith("cuda"):
        cudnn = "off (not CUDA)"
    elif not torch.backends.cudnn.benchmark or "cudnnwarm" in disabled_levers():
        cudnn = "on" if torch.backends.cudnn.benchmark else "off"
    else:
        torch.backends.cudnn.benchmark = False
        cudnn = "warm-up shapes only"
    return {"text_graphs": [f"{p}x{n}" for p, n in graphs], "cudnn_benchmark": cudnn}
