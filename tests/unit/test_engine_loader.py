"""Finding weights offline: checks, the local HF cache, the tiny model's build lock."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from zitops.engine import loader, offline, tiny
from zitops.errors import ModelError


def fake_model(root: Path, *, sharded: bool = False) -> Path:
    """A complete-looking diffusers layout (empty weight files: check_model reads no tensors)."""
    root.mkdir(parents=True)
    index = {"_class_name": "ZImagePipeline"}
    for comp, cls in (("scheduler", "FlowMatchEulerDiscreteScheduler"), ("text_encoder", "Qwen3Model"),
                      ("tokenizer", "Qwen2Tokenizer"), ("transformer", "ZImageTransformer2DModel"),
                      ("vae", "AutoencoderKL")):
        index[comp] = ["diffusers", cls]  # type: ignore[assignment]
        (root / comp).mkdir()
    (root / "model_index.json").write_text(json.dumps(index))
    (root / "scheduler" / "scheduler_config.json").write_text("{}")
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    for comp in ("text_encoder", "vae"):
        (root / comp / "config.json").write_text("{}")
        (root / comp / "model.safetensors").write_bytes(b"x" * 10)
    tr = root / "transformer"
    (tr / "config.json").write_text("{}")
    if sharded:
        shards = {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                  "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}
        (tr / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
        for name in shards.values():
            (tr / name).write_bytes(b"y" * 100)
    else:
        (tr / "diffusion_pytorch_model.safetensors").write_bytes(b"y" * 100)
    return root


def test_complete_and_sharded_models_pass(tmp_path: Path) -> None:
    assert loader.check_model(fake_model(tmp_path / "a")).ok
    result = loader.check_model(fake_model(tmp_path / "b", sharded=True))
    assert result.ok and result.size_bytes == 220 and not result.tiny


def test_partial_weights_list_every_missing_file(tmp_path: Path) -> None:
    root = fake_model(tmp_path / "m", sharded=True)
    (root / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    (root / "vae" / "model.safetensors").unlink()
    (root / "tokenizer" / "tokenizer.json").unlink()
    result = loader.check_model(root)
    assert not result.ok
    assert set(result.missing) == {
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "vae/diffusion_pytorch_model.safetensors (or a sharded index)",
        "tokenizer/tokenizer.json (or vocab.json + merges.txt)",
    }
    with pytest.raises(ModelError, match=r"incomplete, missing .*00002-of-00002.*--model PATH"):
        loader.resolve_model(str(root))


def test_no_model_dir_and_no_index(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such directory"):
        loader.resolve_model(str(tmp_path / "nope"))
    assert loader.check_model(tmp_path).missing == ("model_index.json",)


def test_repo_ids_come_from_the_local_hf_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(ModelError, match="never downloads"):
        loader.resolve_model("Tongyi-MAI/Z-Image-Turbo")
    repo = cache / "models--Tongyi-MAI--Z-Image-Turbo"
    fake_model(repo / "snapshots" / "old")
    snap = fake_model(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    assert loader.resolve_model("Tongyi-MAI/Z-Image-Turbo") == snap


def test_two_workers_build_the_tiny_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[Path] = []

    def slow_fake_make_tiny(directory: str | Path, seed: int = 0) -> Path:
        builds.append(Path(directory))
        time.sleep(0.3)  # long enough for the second worker to reach the lock
        path = Path(directory)
        path.rmdir()
        fake_model(path)
        (path / tiny.TINY_MARKER).write_text("tiny")
        return path

    monkeypatch.setattr(tiny, "make_tiny", slow_fake_make_tiny)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(loader.ensure_tiny(tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    target = tmp_path / "models" / "tiny"
    assert results == [target, target]
    assert len(builds) == 1
    check = loader.check_model(target)
    assert check.ok and check.tiny
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith(".tiny.lock")] == ["tiny"]


def test_offline_switches_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in offline.OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    offline.force_offline()
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
