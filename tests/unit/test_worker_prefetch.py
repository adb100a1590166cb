"""The worker's read-ahead of the weights: the model's safetensors files, only where they fit in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from zitops.worker import prefetch


def _model(tmp_path: Path) -> Path:
    for part, size in (("transformer", 3000), ("vae", 1000)):
        (tmp_path / part).mkdir()
        (tmp_path / part / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * size)
        (tmp_path / part / "config.json").write_text("{}")
    return tmp_path


def test_the_weights_of_a_local_model_are_read_ahead(tmp_path: Path) -> None:
    model = _model(tmp_path)
    assert [p.parent.name for p in prefetch.weight_files(str(model))] == ["transformer", "vae"]
    report = prefetch.start_prefetch(str(model))
    assert report is not None and report["files"] == 2 and report["gib"] == round(4000 / 2**30, 2)
    assert "skipped" not in report


@pytest.mark.parametrize("model", ["tiny", "full-random", "Tongyi-MAI/Z-Image-Turbo"])
def test_nothing_to_read_for_a_built_or_named_model(model: str) -> None:
    assert prefetch.start_prefetch(model) is None


def test_weights_larger_than_memory_allows_are_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "mem_available", lambda: 5000)  # the host's memory, at the process edge
    report = prefetch.start_prefetch(str(_model(tmp_path)))
    assert report is not None and report["skipped"].startswith("MemAvailable")
