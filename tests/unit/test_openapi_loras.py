"""The published schema names the LoRAs this agent has now, or allows none when it has none."""

from __future__ import annotations

from pathlib import Path

from tests.api_support import MemService
from tests.runtime_support import runtime_config
from zitops.agent.http.app import create_app


def _lora_schema(app_schema: dict) -> tuple[dict, dict]:
    c = app_schema["components"]["schemas"]
    return c["LoraIn"]["properties"]["name"], c["ImageGenerationIn"]["properties"]["loras"]


def test_the_schema_follows_the_lora_directory(tmp_path: Path) -> None:
    loras = tmp_path / "loras"
    loras.mkdir()
    config = runtime_config(tmp_path, lora_dir=str(loras))
    app = create_app(config, MemService(tmp_path / "out"), tokens=frozenset())
    name, field = _lora_schema(app.openapi())
    assert "enum" not in name and field["maxItems"] == 0  # none on disk: a request may name none
    (loras / "film-grain.safetensors").write_bytes(b"\0" * 16)
    (loras / "ink.safetensors").write_bytes(b"\0" * 16)
    (loras / "notes.txt").write_text("not a LoRA")
    name, field = _lora_schema(app.openapi())
    assert name["enum"] == ["film-grain", "ink"] and "maxItems" not in field
    (loras / "ink.safetensors").unlink()
    assert _lora_schema(app.openapi())[0]["enum"] == ["film-grain"]
