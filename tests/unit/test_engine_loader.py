"""Finding weights offline: checks, the local HF cache, the tiny model's build lock."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from tests.engine_support import ensure_tiny_racing, fake_model
from zitops.engine import loader, offline
from zitops.errors import ModelError


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


def test_two_workers_build_the_tiny_model_once(tmp_path: Path) -> None:
    # Two real processes released together by a barrier; the builder holds the lock until the
    # other is blocked on it (tests/engine_support.ensure_tiny_racing).
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    log = tmp_path / "race.log"
    procs = [ctx.Process(target=ensure_tiny_racing, args=(str(tmp_path), barrier, str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    lines = log.read_text("utf-8").splitlines()
    target = tmp_path / "models" / "tiny"
    assert len([ln for ln in lines if ln.startswith("build ")]) == 1, lines
    assert sorted(ln.split()[2] for ln in lines if ln.startswith("result ")) == [str(target)] * 2, lines
    check = loader.check_model(target)
    assert check.ok and check.tiny
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith(".tiny.lock")] == ["tiny"]


def test_offline_switches_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in offline.OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    offline.force_offline()
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
