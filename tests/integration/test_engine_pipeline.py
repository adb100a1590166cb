"""The real engine through diffusers' ZImagePipeline, on the CPU, with the tiny model.

Every knob and every sampler: each test shows the knob changes what it claims to.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import pixels, request, settings, tiny_model_dir
from zitops.config import FaultSettings
from zitops.engine.diffusers_engine import DiffusersEngine
from zitops.engine.faulty import FaultyEngine
from zitops.engine.tiny import TINY_NOTICE, TINY_VAE_DIR
from zitops.errors import InvalidRequest, ModelError, ProfileError
from zitops.profile import SAMPLERS

torch = pytest.importorskip("torch")


def make_engine(tmp: Path, **over: Any) -> DiffusersEngine:
    compile_on_cpu = over.pop("compile_on_cpu", False)
    engine = DiffusersEngine(settings(**over), str(tiny_model_dir()), state_dir=tmp,
                             cache_dir=tmp / "cache", compile_on_cpu=compile_on_cpu)
    engine.setup("cpu")
    return engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiffusersEngine]:
    yield make_engine(tmp_path_factory.mktemp("engine"))


def max_diff(a: Any, b: Any) -> int:
    return int(abs(pixels(a) - pixels(b)).max())


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_through_the_pipeline_deterministically(engine: DiffusersEngine,
                                                                   sampler: str) -> None:
    first = engine.generate(request((11,), sampler=sampler, steps=3))
    again = engine.generate(request((11,), sampler=sampler, steps=3))
    other = engine.generate(request((12,), sampler=sampler, steps=3))
    assert first.images[0].size == (32, 32)
    assert first.info["sampler"] == sampler and first.info["tiny"] is True
    assert max_diff(first.images[0], again.images[0]) == 0
    assert max_diff(first.images[0], other.images[0]) > 0
    # Heun is second order: one more transformer call per step after the first.
    assert first.info["transformer_forwards"] == (5 if sampler == "heun" else 3)


def test_samplers_differ_from_each_other(engine: DiffusersEngine) -> None:
    images = {s: engine.generate(request((3,), sampler=s, steps=3)).images[0]
              for s in ("euler", "heun", "dpmpp_2m", "unipc", "euler_a")}
    assert max_diff(images["euler"], images["heun"]) > 0
    assert max_diff(images["euler"], images["dpmpp_2m"]) > 0
    assert max_diff(images["euler"], images["euler_a"]) > 0


def test_schedules_change_the_sigmas(engine: DiffusersEngine) -> None:
    sigmas = {}
    for schedule in ("simple", "karras", "exponential"):
        engine.generate(request(sampler="dpmpp_2m", schedule=schedule, steps=4))
        sigmas[schedule] = [round(float(s), 4) for s in engine.pipe.scheduler.sigmas]
    assert sigmas["simple"][-1] == sigmas["karras"][-1] == 0.0
    assert sigmas["simple"] != sigmas["karras"] != sigmas["exponential"] != sigmas["simple"]
    # The model's own schedule: linspace(1, 1/n) shifted by 3 (clipped below 1 for DPM-Solver).
    assert sigmas["simple"][1:4] == [0.9, 0.75, 0.5]


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_sde"])
def test_image_i_of_a_batch_equals_its_seed_alone(engine: DiffusersEngine, sampler: str) -> None:
    batch = engine.generate(request((21, 22, 23), sampler=sampler))
    alone = engine.generate(request((22,), sampler=sampler))
    assert batch.seeds == (21, 22, 23) and len(batch.images) == 3
    # Batched matmuls may round differently in the last float bits: at most 1/255.
    assert max_diff(batch.images[1], alone.images[0]) <= 1
    assert max_diff(batch.images[0], batch.images[1]) > 10


def test_progress_reports_each_step(engine: DiffusersEngine) -> None:
    seen: list[tuple[int, int]] = []
    engine.generate(request(steps=3), lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_guidance_and_negative_prompt_take_effect(engine: DiffusersEngine) -> None:
    plain = engine.generate(request((5,))).images[0]
    cfg = engine.generate(request((5,), guidance=4.0, negative_prompt="blurry")).images[0]
    cfg_other = engine.generate(request((5,), guidance=4.0, negative_prompt="sharp photo")).images[0]
    ignored = engine.generate(request((5,), guidance=0.0, negative_prompt="sharp photo")).images[0]
    assert max_diff(plain, cfg) > 0
    assert max_diff(cfg, cfg_other) > 0
    assert max_diff(plain, ignored) == 0  # no CFG: the negative prompt is unused


def test_bad_inputs_get_one_clear_line(engine: DiffusersEngine) -> None:
    with pytest.raises(InvalidRequest, match="width: 40 is not a positive multiple of 16"):
        engine.generate(request(width=40))
    with pytest.raises(InvalidRequest, match="valid: euler, euler_a"):
        engine.generate(request(sampler="ddim"))


def test_precision_knobs_set_dtypes(tmp_path: Path, engine: DiffusersEngine) -> None:
    assert engine.describe()["dtypes"] == {"transformer": "float32", "text_encoder": "float32", "vae": "float32"}
    mixed = make_engine(tmp_path, precision="bf16", vae_precision="fp32")
    assert mixed.describe()["dtypes"] == {"transformer": "bfloat16", "text_encoder": "bfloat16",
                                          "vae": "float32"}
    half = make_engine(tmp_path, precision="fp16", vae_precision="bf16")
    assert half.pipe.transformer.dtype == torch.float16 and half.pipe.vae.dtype == torch.bfloat16
    out = mixed.generate(request((4,)))
    assert max_diff(out.images[0], engine.generate(request((4,))).images[0]) > 0


def test_vae_decode_knobs_change_the_decode_path(tmp_path: Path, engine: DiffusersEngine) -> None:
    full = engine.generate(request((8,), width=64, height=64))
    tiled_engine = make_engine(tmp_path, vae_decode="tiled")
    assert tiled_engine.pipe.vae.use_tiling and tiled_engine.pipe.vae.use_slicing
    tiled = tiled_engine.generate(request((8,), width=64, height=64))
    assert tiled.info["vae_decode"] == "tiled"
    assert max_diff(full.images[0], tiled.images[0]) > 0  # 64 px > 32 px tiles: blended seams

    fast_engine = make_engine(tmp_path, vae_decode="fast", tiny_vae_path=str(tiny_model_dir() / TINY_VAE_DIR))
    fast = fast_engine.generate(request((8,), width=64, height=64))
    assert fast.info["vae_decode"] == "fast" and fast_engine.tiny_vae is not None
    assert fast.images[0].size == (64, 64) and max_diff(full.images[0], fast.images[0]) > 0

    fallback = make_engine(tmp_path, vae_decode="fast")
    assert fallback.effective["vae_decode"] == "tiled"
    assert any("falling back to tiled" in n for n in fallback.notes)


def test_offload_is_refused_clearly_on_cpu(tmp_path: Path) -> None:
    eng = make_engine(tmp_path, offload="model")
    assert eng.effective["offload"] == "none"
    assert any("needs a CUDA device" in n for n in eng.notes)
    assert len(eng.generate(request()).images) == 1


def test_compile_knob_compiles_the_repeated_blocks(tmp_path: Path) -> None:
    eng = make_engine(tmp_path, compile=True, compile_on_cpu=True)
    assert eng.effective["compile"] is True
    blocks = [m for m in eng.pipe.transformer.modules() if type(m).__name__ == "ZImageTransformerBlock"]
    assert blocks and all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "inductor")
    skipped = make_engine(tmp_path, compile=True)
    assert skipped.effective["compile"] is False


def test_attention_backend_knob(tmp_path: Path) -> None:
    eng = make_engine(tmp_path, attention_backend="native")
    assert eng.effective["attention_backend"] == "native"
    assert len(eng.generate(request()).images) == 1
    with pytest.raises(ProfileError, match="valid: .*native"):
        make_engine(tmp_path, attention_backend="warp-drive")


def test_memory_is_zero_on_cpu_and_describe_says_tiny(engine: DiffusersEngine) -> None:
    mem = engine.memory()
    assert mem.allocated_mib == 0.0 and not mem.simulated
    engine.release_cache()
    d = engine.describe()
    assert d["tiny"] is True and d["notice"] == TINY_NOTICE


def test_missing_weights_list_what_is_missing(tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir(), broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(broken / "tokenizer")
    eng = DiffusersEngine(settings(), str(broken), state_dir=tmp_path)
    with pytest.raises(ModelError) as info:
        eng.setup("cpu")
    msg = str(info.value)
    assert "tokenizer/" in msg and "transformer/diffusion_pytorch_model.safetensors" in msg
    assert "--model PATH" in msg


def test_oom_split_through_the_fault_engine_wrapping_the_real_one(engine: DiffusersEngine) -> None:
    wrapped = FaultyEngine(FaultSettings(oom_above_batch=1), explicit=True, inner=engine)
    wrapped.setup("cpu")
    split = wrapped.generate(request((31, 32), sampler="dpmpp_2m_sde"))
    whole = engine.generate(request((31, 32), sampler="dpmpp_2m_sde"))
    assert split.info["oom_splits"] == 1 and split.seeds == (31, 32)
    for a, b in zip(split.images, whole.images, strict=True):
        assert max_diff(a, b) <= 1


def test_previews_decode_only_when_asked(engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = engine._decode

    def counting(latents: Any, free_hooks: bool = True) -> list[Any]:
        calls.append(int(latents.shape[0]))
        return real(latents, free_hooks)

    monkeypatch.setattr(engine, "_decode", counting)
    engine.generate(request((1, 2), steps=3))
    assert calls == [2]  # the final decode only
    calls.clear()
    # The default latent previews never touch the VAE: a linear map of the latents, at the image's size.
    out = engine.generate(request((1,), steps=3, preview=True))
    assert calls == [1] and len(engine.last_previews) == 1
    assert engine.last_previews[0].size == (out.images[0].width, out.images[0].height)
    assert out.info["prompt"] == "a red cat" and "previews" not in out.info
    calls.clear()
    monkeypatch.setattr(engine, "settings", engine.settings.model_copy(update={"preview_decode": "vae"}))
    engine.generate(request((1,), steps=3, preview=True))
    assert calls == [1, 1, 1, 1] and len(engine.last_previews) == 1


def test_full_architecture_has_the_real_parameter_counts() -> None:
    from zitops.engine.full import (
        build_text_encoder,
        build_transformer,
        build_vae,
        count_parameters,
    )

    transformer = build_transformer("meta", torch.bfloat16)
    assert count_parameters(transformer) == pytest.approx(6.155e9, rel=1e-3)
    assert transformer.dtype == torch.bfloat16 and transformer.config.n_layers == 30
    assert count_parameters(build_text_encoder("meta", torch.bfloat16)) == pytest.approx(4.02e9, rel=1e-2)
    vae = build_vae("meta", torch.bfloat16)
    assert vae.config.latent_channels == 16 and vae.config.scaling_factor == 0.3611


def test_batches_above_max_batch_run_in_chunks(tmp_path: Path) -> None:
    eng = make_engine(tmp_path, max_batch=2)
    out = eng.generate(request((1, 2, 3)))
    assert out.seeds == (1, 2, 3) and len(out.images) == 3 and out.info["chunks"] == 2
    alone = eng.generate(request((3,)))
    assert max_diff(out.images[2], alone.images[0]) <= 1


def test_full_architecture_refuses_the_cpu(tmp_path: Path) -> None:
    from zitops.errors import EngineError

    with pytest.raises(EngineError, match="needs a CUDA device"):
        DiffusersEngine(settings(), "full-random", state_dir=tmp_path).setup("cpu")


def test_img2img_and_inpaint_share_the_loaded_modules(engine: DiffusersEngine) -> None:
    from PIL import Image

    from zitops.agent.http.image_input import to_png_b64

    init = to_png_b64(Image.effect_noise((32, 32), 64).convert("RGB"), "RGB")
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    params_before = {id(p) for p in engine.pipe.transformer.parameters()}
    edited = engine.generate(request((4,), init_image=init, strength=0.6, steps=3))
    painted = engine.generate(request((4,), init_image=init, mask=to_png_b64(mask, "L"), strength=1.0, steps=3))
    assert edited.images[0].size == painted.images[0].size == (32, 32)
    assert set(engine.variants) == {"img2img", "inpaint"}
    for kind, variant in engine.variants.items():
        assert type(variant).__name__ != type(engine.pipe).__name__, kind
        for module in ("transformer", "text_encoder", "vae", "tokenizer"):
            assert getattr(variant, module) is getattr(engine.pipe, module), (kind, module)
    # No second copy was made behind the shared objects either: the same parameter tensors.
    assert {id(p) for p in engine.pipe.transformer.parameters()} == params_before
    # Built once: a second img2img request reuses the cached variant.
    cached = engine.variants["img2img"]
    engine.generate(request((5,), init_image=init, strength=0.6, steps=3))
    assert engine.variants["img2img"] is cached


def test_controlnet_loads_on_first_use_over_the_loaded_modules(tmp_path: Path) -> None:
    from PIL import Image

    from tests.controlnet_support import make_controlnet
    from zitops.agent.http.image_input import to_png_b64

    eng = DiffusersEngine(settings(), str(tiny_model_dir()), state_dir=tmp_path, cache_dir=tmp_path / "cache",
                          controlnet_dir=make_controlnet(tmp_path / "cn"))
    eng.setup("cpu")
    assert eng.controlnets.pipeline is None, "no ControlNet weights before a request asks for control"
    params_before = {id(p) for p in eng.pipe.transformer.parameters()}
    control = to_png_b64(Image.effect_noise((32, 32), 64).convert("RGB"), "RGB")
    out = eng.generate(request((4,), control_image=control, control_strength=1.0, steps=2))
    assert out.images[0].size == (32, 32) and out.info["mode"] == "control"
    cn: Any = eng.controlnets.pipeline
    for module in ("transformer", "text_encoder", "vae", "tokenizer"):
        assert getattr(cn, module) is getattr(eng.pipe, module), module
    # The ControlNet's shared parts are the transformer's own objects (from_transformer), not copies.
    assert cn.controlnet.noise_refiner is eng.pipe.transformer.noise_refiner
    assert {id(p) for p in eng.pipe.transformer.parameters()} == params_before
    eng.generate(request((5,), control_image=control, steps=2))
    assert eng.controlnets.pipeline is cn, "built once"
