"""A corrupt LoRA file is the request's 422, and its text names the file, never the host's LoRA directory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.engine_support import request, settings, tiny_model_dir
from zitops.errors import InvalidRequest

pytestmark = pytest.mark.slow


def test_a_corrupt_lora_names_the_file_not_the_directory(tmp_path: Path) -> None:
    from zitops.engine.diffusers_engine import DiffusersEngine

    loras = tmp_path / "secret-lora-dir"
    loras.mkdir()
    (loras / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}" + b"\0" * 64)
    engine = DiffusersEngine(settings(), str(tiny_model_dir()), state_dir=tmp_path, cache_dir=tmp_path / "cache",
                             lora_dir=loras)
    engine.setup("cpu")
    with pytest.raises(InvalidRequest) as caught:
        engine.generate(replace(request((3,), steps=1), loras=(("broken", 1.0),)))
    message = str(caught.value)
    assert message.startswith("loras: 'broken' could not be loaded (broken.safetensors): "), message
    assert str(loras) not in message and str(tmp_path) not in message, message
