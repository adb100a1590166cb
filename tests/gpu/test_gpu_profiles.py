"""Every built-in profile on a real GPU: its engine settings are in effect, not just accepted.

For each profile the tiny model is set up on ``cuda:0`` with the profile's own
engine section and run once (small size, the profile's sampler and schedule).
Then the pipeline itself is inspected: dtypes, where the weights live (model
offload hooks where a profile offloads, group offload for lowvram-12 and -8, fp8 where it quantizes), VAE tiling, the compiled transformer blocks, the
text encoder's CUDA graphs, cuDNN autotuning.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import tiny_model_dir
from tests.gpu_support import (
    DEVICE,
    as_array,
    gpu_engine,
    on_device,
    profile_settings,
    release,
    small_request,
)
from zitops.engine.precision.fp8 import fp8_supported
from zitops.engine.precision.offload import describe as offload_layout
from zitops.engine.precision.offload import group_blocks
from zitops.engine.tiny import TINY_VAE_DIR
from zitops.profile import list_builtin, load_profile

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]
torch = pytest.importorskip("torch")

TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
PROFILES = [p.name for p in list_builtin()]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One inductor cache for the module: the second compiled profile reuses the first one's kernels."""
    yield tmp_path_factory.mktemp("compile-cache")


def _compiled_blocks(module: Any) -> int:
    # nn.Module.compile(), which diffusers' compile_repeated_blocks calls per block, sets this.
    return sum(1 for m in module.modules() if getattr(m, "_compiled_call_impl", None) is not None)


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_runs_with_its_engine_settings_in_effect(name: str, compile_cache: Path) -> None:
    profile = load_profile(name)
    s = profile.engine
    engine = gpu_engine(s, compile_cache)
    try:
        pipe, eff = engine.pipe, engine.effective
        assert engine.device == DEVICE and eff["offload"] == s.offload
        dtypes = engine.describe()["dtypes"]
        assert dtypes["transformer"] == TORCH_DTYPE[s.precision]
        assert dtypes["text_encoder"] == TORCH_DTYPE[s.precision]
        assert dtypes["vae"] == TORCH_DTYPE[s.vae_precision]

        if s.offload == "model":
            # accelerate's CpuOffload hook on every component, weights parked on the host.
            for component in ("text_encoder", "transformer", "vae"):
                assert hasattr(getattr(pipe, component), "_hf_hook"), component
            assert "text_encoder" not in eff, "no CUDA graphs for an encoder that moves between devices"
        elif s.offload == "group":
            # Group hooks on the transformer and the text encoder, the VAE resident.
            assert offload_layout(pipe) == {"transformer": "group", "text_encoder": "group", "vae": "cuda"}
            assert eff["offload_group"]["blocks"] == group_blocks(s) and eff["offload_group"]["stream"] is s.offload_stream
            assert "text_encoder" not in eff, "no CUDA graphs for an encoder that moves between devices"
        elif s.offload == "text_encoder":
            # The text encoder streamed block by block from pinned memory, the rest resident.
            assert offload_layout(pipe) == {"transformer": "cuda", "text_encoder": "group", "vae": "cuda"}
            assert eff["offload_group"]["components"] == ["text_encoder"]
            assert "text_encoder" not in eff, "no CUDA graphs for an encoder that moves between devices"
        else:
            assert s.offload == "none"
            for component in ("text_encoder", "transformer", "vae"):
                assert on_device(getattr(pipe, component)) == {"cuda"}, component
            assert eff["text_encoder"] == "cuda_graphs"

        decode = "tiled" if s.vae_decode == "fast" and not s.tiny_vae_path else s.vae_decode
        assert eff["vae_decode"] == decode
        assert bool(pipe.vae.use_tiling) is (decode == "tiled")
        if s.vae_decode == "fast" and not s.tiny_vae_path:
            assert any("falling back to tiled decode" in n for n in engine.notes)

        assert eff["compile"] is s.compile
        assert (_compiled_blocks(pipe.transformer) > 0) is s.compile
        assert eff["cudnn_benchmark"] is True and torch.backends.cudnn.benchmark is True
        assert eff["attention_backend"] in ("flash3", "_flash_3", "native"), eff
        assert eff["fused_projections"]["qkv"] > 0 and eff["fused_projections"]["ffn"] > 0
        if s.fp8:  # lowvram: fp8 GEMMs where the card has them, weight-only elsewhere
            assert eff["fp8"]["mode"] == ("gemm" if fp8_supported(DEVICE) else "weight_only"), eff["fp8"]
            assert eff["fp8"]["linears"]["transformer"] > 0 and eff["fp8"]["linears"]["text_encoder"] > 0

        g = profile.generation
        req = small_request((3, 4), sampler=g.sampler, schedule=g.schedule)
        out = engine.generate(req)
        assert len(out.images) == 2 and out.info["device"] == DEVICE
        assert out.info["transformer_forwards"] == req.steps  # euler and dpmpp_2m_sde: one per step
        assert out.info["oom_splits"] == 0
        if s.max_batch < len(req.seeds):  # lowvram: one image per pipeline call
            assert out.info["chunks"] == len(req.seeds)
        assert all(as_array(im).std() > 0 for im in out.images)

        if s.offload == "model":
            # After the job the hooks moved every component back to the host.
            for component in ("text_encoder", "transformer", "vae"):
                assert on_device(getattr(pipe, component)) == {"cpu"}, component
        elif s.offload == "group":
            # After the job the groups are back in host memory; only the VAE stays.
            for component in ("text_encoder", "transformer"):
                assert on_device(getattr(pipe, component)) == {"cpu"}, component
        elif s.offload == "text_encoder":
            # After the job the encoder's blocks are back in pinned host memory; the rest stayed.
            assert on_device(pipe.text_encoder) == {"cpu"}
            assert on_device(pipe.transformer) == on_device(pipe.vae) == {"cuda"}
        else:
            runner = pipe._zitops_text_runner
            captured = dict(runner._captured)
            assert captured, "the text encoder ran without a CUDA graph"
            engine.generate(req)  # the same prompt shape replays the graph: nothing new is captured
            assert runner._captured.keys() == captured.keys()
    finally:
        release(engine)


def test_fast_vae_decode_uses_the_tiny_autoencoder_on_the_gpu(tmp_path: Path) -> None:
    settings = profile_settings("ecommerce", compile=False, tiny_vae_path=str(tiny_model_dir() / TINY_VAE_DIR))
    engine = gpu_engine(settings, tmp_path)
    try:
        assert engine.effective["vae_decode"] == "fast"
        assert engine.tiny_vae is not None and on_device(engine.tiny_vae) == {"cuda"}
        from zitops.engine.precision.fp8 import fp8_supported

        # ecommerce's engine.fp8 "auto": the fp8 path exactly where the card has fp8 GEMMs.
        assert (engine.effective.get("fp8", {}).get("mode") == "gemm") == fp8_supported(DEVICE)
        calls: list[int] = []
        handle = engine.tiny_vae.decoder.register_forward_hook(lambda m, a, o: calls.append(1))
        try:
            out = engine.generate(small_request((5,), sampler="dpmpp_2m_sde"))
        finally:
            handle.remove()
        assert calls, "the image was not decoded by the tiny autoencoder"
        assert as_array(out.images[0]).std() > 0
    finally:
        release(engine)
